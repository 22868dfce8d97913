"""What the framework costs per step: train.py's real path (``gpt.training.train`` with the default config, its
callbacks, loggers, progress bar and NaN guard) beside a minimal plain PyTorch loop over the same model, data,
optimizer, schedule and precision, in one process.

    python bench/bench_train.py --preset tiny       # CPU: 1 layer, 16 wide, block 8, batch 1: the fixed cost per step
    python bench/bench_train.py --preset default    # CPU: the default recipe's shape (4L/4H/128, block 64, batch 12)
    python bench/bench_train.py --preset gpt2       # a GPU: GPT-2 124M, batch 16 x 1024, bf16, compiled
    python bench/bench_train.py --whole-run         # `python train.py` against nanoGPT's CPU recipe (nanogpt_cpu.py)

Prints ms/step, tokens/s, MFU (on a GPU) and the ratio of the two step times, for the steps after the warm-up.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: the package is beside it

from gpt.data.windows import RandomWindows  # noqa: E402
from gpt.training.devices import auto_precision  # noqa: E402
from gpt.training.monitoring import gpu_peak_flops  # noqa: E402
from gpt.training.optim import build_optimizer, warmup_cosine  # noqa: E402
from gpt.training.run import train  # noqa: E402

PRESETS = {  # overrides of the default config, timed steps, warm-up steps
    "tiny": (["model.n_layer=1", "model.n_head=1", "model.n_embd=16", "model.block_size=8", "data.batch_size=1"],
             3000, 500),
    "default": ([], 300, 50),
    "gpt2": (["model=gpt2", "data.batch_size=16"], 50, 15),
}


class StepTimer(L.Callback):
    """Wall time of the optimizer steps after ``warmup`` (validation excluded), written to ``path`` as JSON."""

    def __init__(self, warmup: int, path: str):
        self.warmup, self.path, self.start = warmup, path, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup and self.start is None:
            synchronize()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == trainer.max_steps:
            synchronize()
            Path(self.path).write_text(json.dumps({"seconds": time.perf_counter() - self.start}))


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def config(overrides: list[str], steps: int, warmup: int, out: Path):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=[
            f"paths.root_dir={REPO}", f"paths.output_dir={out}", f"paths.data_dir={out.parent / 'data'}", *overrides,
            f"trainer.max_steps={warmup + steps}", f"trainer.val_every_n_steps={warmup + steps}",
            "data.val_windows=16", "trainer.enable_progress_bar=true",
            "+callbacks.bench_timer._target_=bench_train.StepTimer", f"+callbacks.bench_timer.warmup={warmup}",
            f"+callbacks.bench_timer.path={out / 'timing.json'}"])


def time_train(cfg, out: Path) -> float:
    """Seconds of the timed steps through ``gpt.training.train``, as ``python train.py`` runs them."""
    train(cfg)
    return json.loads((out / "timing.json").read_text())["seconds"]


def time_plain_loop(cfg, steps: int, warmup: int) -> float:
    """Seconds of the same steps through a hand-written loop: the same model, batches, AdamW groups, warmup-cosine
    schedule, gradient clipping, precision and compilation (the loss inside the compiled model, as in train.py);
    the loss read on the host every 10 steps."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = instantiate(cfg.data, block_size=cfg.model.block_size)
    data.prepare_data()
    model = instantiate(cfg.model, vocab_size=data.tokenizer.vocab_size).build().to(device)
    if device.type == "cuda":
        model.compile()
    optimizer = build_optimizer(model, lambda groups, **fused: torch.optim.AdamW(
        groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay, **fused), fused=True)
    schedule = warmup_cosine(optimizer, cfg.scheduler.warmup_steps, cfg.trainer.max_steps, cfg.scheduler.min_lr)
    windows = RandomWindows(data.prepared.split("train"), cfg.model.block_size, cfg.data.batch_size, cfg.seed)
    batches = iter(DataLoader(windows, batch_size=None, pin_memory=device.type == "cuda"))
    bf16 = auto_precision(cfg.trainer.precision) == "bf16-mixed"
    for step in range(warmup + steps):
        if step == warmup:
            synchronize()
            start = time.perf_counter()
        batch = {name: t.to(device, non_blocking=True) for name, t in next(batches).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(batch["input_ids"], labels=batch["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.gradient_clip_val)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 10 == 0:
            loss.item()
    synchronize()
    return time.perf_counter() - start


def benchmark(preset: str, repeats: int) -> dict:
    overrides, steps, warmup = PRESETS[preset]
    return compare_loops(preset, overrides, steps, warmup, repeats)


def compare_loops(name: str, overrides: list[str], steps: int, warmup: int, repeats: int) -> dict:
    """Time both loops, alternated ``repeats`` times; print the table; return the medians (ms/step), tokens/s and MFU
    of train.py's path and its ratio to the plain loop."""
    seconds = {"plain PyTorch loop": [], "train.py (gpt.training.train)": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(repeats):  # alternated, so that a slow spell of the machine hits both
            out = Path(tmp) / f"run{repeat}"
            cfg = config(overrides, steps, warmup, out)
            seconds["plain PyTorch loop"].append(time_plain_loop(cfg, steps, warmup))
            seconds["train.py (gpt.training.train)"].append(time_train(cfg, out))
    model = instantiate(cfg.model, vocab_size=50257 if cfg.data.tokenizer == "gpt2" else 68).build()
    tokens_per_step = cfg.data.batch_size * cfg.model.block_size
    on_gpu = torch.cuda.is_available()
    peak = gpu_peak_flops(torch.cuda.get_device_name()) if on_gpu else None
    print(f"\n{name}: {model.config.n_layer} layer(s), {model.config.n_embd} wide, batch {cfg.data.batch_size} x "
          f"{cfg.model.block_size}, {auto_precision(cfg.trainer.precision)}, compiled {on_gpu}, "
          f"{torch.cuda.get_device_name() if on_gpu else f'CPU ({torch.get_num_threads()} threads)'}; "
          f"{steps} steps timed after {warmup}, median of {repeats}\n")
    print("| loop | ms/step | tokens/s | MFU |\n|---|---|---|---|")
    medians, mfu = {}, None
    for loop, values in seconds.items():
        medians[loop] = statistics.median(values) / steps
        tokens_per_sec = tokens_per_step / medians[loop]
        mfu = model.flops_per_token() * tokens_per_sec / peak if peak else None
        print(f"| {loop} | {1000 * medians[loop]:.2f} | {tokens_per_sec:,.0f} | "
              f"{f'{100 * mfu:.1f}%' if mfu else 'n/a'} |")
    plain, ours = medians.values()
    print(f"\ntrain.py / plain loop, time per step: {ours / plain:.3f}")
    return {"plain_ms": 1000 * plain, "train_ms": 1000 * ours, "tokens_per_sec": tokens_per_step / ours,
            "mfu": mfu, "speed_ratio": plain / ours}


# --------------------------------------------------------------------------- whole processes


def whole_runs(repeats: int) -> None:
    """``python train.py`` and nanoGPT's CPU recipe as whole processes, alternated, ``repeats`` times each."""
    commands = {"python train.py": [sys.executable, "train.py", "trainer.enable_progress_bar=false"],
                "nanoGPT's CPU recipe (plain loop)": [sys.executable, "bench/nanogpt_cpu.py"]}
    results = {name: [] for name in commands}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(repeats):
            for name, command in commands.items():
                extra = [f"hydra.run.dir={tmp}/run{repeat}"] if name == "python train.py" else []
                start = time.perf_counter()
                done = subprocess.run(command + extra, cwd=REPO, capture_output=True, text=True, check=True)
                loss = float(done.stdout.strip().splitlines()[-1].split()[2].rstrip(","))
                results[name].append((time.perf_counter() - start, loss))
                print(f"{name}: {results[name][-1][0]:.1f} s, best val/loss {loss:.4f}", flush=True)
    print("\n| process | wall s (each run) | median | best val/loss |\n|---|---|---|---|")
    for name, runs in results.items():
        print(f"| {name} | {', '.join(f'{w:.1f}' for w, _ in runs)} | {statistics.median(w for w, _ in runs):.1f} | "
              f"{', '.join(f'{loss:.4f}' for _, loss in runs)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="gpt2" if torch.cuda.is_available() else "tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--whole-run", action="store_true", help="time whole processes instead")
    args = parser.parse_args()
    os.chdir(REPO)
    if args.whole_run:
        whole_runs(args.repeats)
    else:
        benchmark(args.preset, args.repeats)


if __name__ == "__main__":
    main()
