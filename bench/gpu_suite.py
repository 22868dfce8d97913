"""The GPU suite: GPT-2 124M against nanoGPT's figures, the framework's cost, recompilation, small models at GPU
speed, quiet output. One markdown table: the device, torch's version, each row's figure beside its target.

    python bench/gpu_suite.py            # one H100/H200: about 8 minutes, torch.compile included
    python bench/gpu_suite.py --quick    # every row at CPU sizes: a check of the suite itself (tests/test_benchmarks.py)

The targets are the figures nanoGPT reached on an H200 in the same run as ours (../shared/GUIDE.md: 472k tokens/s and
11.4 GiB for GPT-2 124M at 16 x 1024; 88 s and val 1.4515 for the baby GPT), and the 2-core CPU's time for the masked
LM. On a GPU machine without Hydra, take the wheels along (../shared/tools/gpu-wheels.sh .whl) and run:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:. python bench/gpu_suite.py
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]  # run as a script: the package and bench_train are beside it

from bench_train import compare_loops  # noqa: E402

from gpt.data.examples import ExamplesDataModule  # noqa: E402
from gpt.models.configs import GPTConfig  # noqa: E402
from gpt.models.generate import GenerationSettings
from gpt.training.monitoring import gpu_peak_flops  # noqa: E402

NANOGPT_TOKENS_PER_SEC, NANOGPT_PEAK_GIB = 472_000, 11.4  # GPT-2 124M, 16 x 1024, H200
NANOGPT_BABY_GPT_SECONDS, BABY_GPT_VAL_LOSS = 88, 1.47
CPU_MLM_CHAR_SECONDS = 406  # python train.py experiment=mlm_char on the 2-core CPU (README: masked LM)
# CPU sizes of --quick: each row's code runs, in seconds, at shapes that say nothing about speed
QUICK_GPT2 = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64}
QUICK_TRAIN = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "trainer.max_steps=4",
               "data.batch_size=4", "+trainer.limit_val_batches=1"]


class GraphRecorder:
    """A torch.compile backend that counts the graphs it is given (dynamo's tracing and guards, as for inductor)."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def gpt2_step(quick: bool) -> tuple[float, float]:
    """(tokens/s, peak GiB) of GPT-2 124M's training step at 16 x 1024: bf16, compiled, fused AdamW, synthetic
    batches on the device, the loss inside the compiled model, no clipping."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = QUICK_GPT2 if quick else {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024}
    config = GPTConfig(vocab_size=50257, pad_vocab_multiple=64, mlp="gelu_tanh", **shape)
    model = config.build().to(device)
    batch = 2 if quick else 16
    optimizer = torch.optim.AdamW(model.param_groups(), lr=6e-4, betas=(0.9, 0.95), fused=True)
    if not quick:
        model.compile()
    ids = torch.randint(0, 50257, (batch, config.block_size + 1), device=device)
    warmup, steps = (2, 3) if quick else (15, 50)
    for step in range(warmup + steps):
        if step == warmup:
            synchronize()
            torch.cuda.reset_peak_memory_stats() if device == "cuda" else None
            start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(ids[:, :-1], labels=ids[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return batch * config.block_size * steps / seconds, peak


def graphs_compiled(quick: bool) -> tuple[int, int]:
    """(graphs compiled by 64 generated tokens, graphs compiled over 100 masked-LM batches of varied lengths)."""
    torch._dynamo.reset()
    model = GPTConfig(vocab_size=68, block_size=256, n_layer=1, n_head=2, n_embd=32).build().eval()
    recorder = GraphRecorder()
    model.compile(backend=recorder)
    with torch.no_grad():
        model(torch.randint(0, 68, (1, 16)))
    before = recorder.graphs
    model.generate([[1, 2, 3]], GenerationSettings(max_new_tokens=64, temperature=0.8))
    generation = recorder.graphs - before
    torch._dynamo.reset()
    with tempfile.TemporaryDirectory() as cache:
        data = ExamplesDataModule(text_path=str(REPO / "data" / "tinyshakespeare.txt"), cache_dir=cache, block_size=256, batch_size=16,
                                  mlm_probability=0.15)
        data.prepare_data()
        masked = GPTConfig(vocab_size=data.tokenizer.vocab_size, block_size=256, n_layer=1, n_head=2, n_embd=32,
                           causal=False).build()
        recorder = GraphRecorder()
        masked.compile(backend=recorder)
        for _, batch in zip(range(10 if quick else 100), data.train_dataloader()):
            masked(batch["input_ids"], labels=batch["labels"], attention_mask=batch["attention_mask"]).backward()
    return generation, recorder.graphs


def whole_run(overrides: list[str]) -> tuple[float, float, int]:
    """(wall seconds, best val/loss, warning lines) of ``python train.py`` with ``overrides``, a whole process."""
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}"], cwd=REPO,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"train.py {' '.join(overrides)} failed:\n{done.stderr[-3000:]}")
    best = float(re.search(r"best val/loss (\d+\.\d+)", done.stdout)[1])
    warnings = sum("warn" in line.lower() for line in (done.stdout + done.stderr).splitlines())
    return seconds, best, warnings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="every row at CPU sizes (figures mean nothing)")
    args = parser.parse_args()
    quick, started = args.quick, time.perf_counter()
    os.chdir(REPO)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    peak_flops = gpu_peak_flops(device) if torch.cuda.is_available() else None
    rows = []

    def row(what: str, figure: str, target: str, met: bool | None) -> None:
        rows.append(f"| {what} | {figure} | {target} | {'n/a' if met is None or quick else 'yes' if met else 'no'} |")
        print(rows[-1], flush=True)

    tokens_per_sec, peak = gpt2_step(quick)
    row("GPT-2 124M step, 16 x 1024, bf16, compiled, synthetic batches: tokens/s", f"{tokens_per_sec:,.0f}",
        f">= {1.05 * NANOGPT_TOKENS_PER_SEC:,.0f} (1.05 x nanoGPT)", tokens_per_sec >= 1.05 * NANOGPT_TOKENS_PER_SEC)
    row("the same: peak memory (GiB)", f"{peak:.1f}", f"<= {0.75 * NANOGPT_PEAK_GIB:.2f} (0.75 x nanoGPT)",
        peak <= 0.75 * NANOGPT_PEAK_GIB)

    preset = (["model=gpt2", *[f"model.{k}={v}" for k, v in QUICK_GPT2.items()], "data.batch_size=2"], 2, 1) if quick \
        else (["model=gpt2", "data.batch_size=16"], 50, 15)
    loops = compare_loops("gpt2", *preset, repeats=1)
    row("bench_train.py --preset gpt2: train.py's path, tokens/s", f"{loops['tokens_per_sec']:,.0f}",
        f"MFU against {peak_flops / 1e12:.0f} TFLOP/s" if peak_flops else "MFU on a GPU", None)
    row("the same: MFU", f"{100 * loops['mfu']:.1f}%" if loops["mfu"] else "n/a", "reported", None)
    row("the same: speed against the plain loop", f"{loops['speed_ratio']:.3f}", ">= 0.98",
        loops["speed_ratio"] >= 0.98)

    generation, padded = graphs_compiled(quick)
    row("graphs compiled by 64 generated tokens", str(generation), "0", generation == 0)
    row("graphs compiled over 100 masked-LM batches of varied lengths", str(padded), "<= 4", padded <= 4)

    seconds, best, warnings = whole_run(["experiment=shakespeare_char", *(QUICK_TRAIN if quick else [])])
    row("python train.py experiment=shakespeare_char: whole process (s)", f"{seconds:.0f}",
        f"<= {NANOGPT_BABY_GPT_SECONDS} (nanoGPT)", seconds <= NANOGPT_BABY_GPT_SECONDS)
    row("the same: best val/loss", f"{best:.4f}", f"<= {BABY_GPT_VAL_LOSS}", best <= BABY_GPT_VAL_LOSS)
    mlm_seconds, _, mlm_warnings = whole_run(["experiment=mlm_char", *(QUICK_TRAIN if quick else [])])
    row("python train.py experiment=mlm_char: whole process (s)", f"{mlm_seconds:.0f}",
        f"<= {CPU_MLM_CHAR_SECONDS / 10:.0f} (10x the 2-core CPU's {CPU_MLM_CHAR_SECONDS} s)",
        mlm_seconds <= CPU_MLM_CHAR_SECONDS / 10)
    row("warning lines in the output of both runs", str(warnings + mlm_warnings), "0", warnings + mlm_warnings == 0)

    print(f"\n{device}, torch {torch.__version__}, {time.perf_counter() - started:.0f} s in all"
          f"{' (--quick: CPU sizes, the figures say nothing of speed)' if quick else ''}\n")
    print("| row | figure | target | met |\n|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
