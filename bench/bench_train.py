"""Time one training setup two ways in one process: (a) our Lightning training step, (b) a minimal
hand-written PyTorch loop with the same model, data, optimizer, precision and compile setting.

    python bench/bench_train.py                         # GPT-2 124M, batch 16 x 1024, bf16, compiled (a GPU)
    python bench/bench_train.py --model gpt --batch-size 4 --block-size 64 --steps 5 --warmup 2   # a CPU smoke run

Prints tokens/s, ms/step, MFU, peak GPU memory and the ratio (a) / (b).
"""

import argparse
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.nn import functional as F
from torch.utils.data import DataLoader

from gpt.callbacks import flops_per_token, gpu_peak_flops
from gpt.data import RandomWindows, prepare
from gpt.lm import CausalLM
from gpt.training import auto_precision

REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2", help="a config in conf/model/")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=50, help="timed steps")
    parser.add_argument("--warmup", type=int, default=15, help="untimed steps first (compilation)")
    parser.add_argument("--compile", choices=["auto", "true", "false"], default="auto")
    parser.add_argument("--precision", default="auto")
    return parser.parse_args()


class StepTimer(L.Callback):
    """Wall time of the steps after ``warmup``, the GPU synchronised at both ends."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.seconds = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            synchronize()
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        synchronize()
        self.seconds = time.perf_counter() - self.start


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def make_model_config(args):
    cfg = OmegaConf.load(REPO / "conf" / "model" / f"{args.model}.yaml")
    return instantiate(cfg, vocab_size=50257, block_size=args.block_size)


def make_loader(args, token_dir: Path) -> DataLoader:
    meta = prepare(REPO / "data" / "tinyshakespeare.txt", token_dir, tokenizer="gpt2")
    windows = RandomWindows(token_dir / "train.bin", meta["dtype"], args.block_size, args.batch_size, seed=0)
    return DataLoader(windows, batch_size=None, pin_memory=torch.cuda.is_available())


def optimizer_factory(params, **extra):
    return torch.optim.AdamW(params, lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, **extra)


def run_lightning(args, loader, compile_flag) -> float:
    lm = CausalLM(make_model_config(args), optimizer_factory, compile=compile_flag)
    timer = StepTimer(args.warmup)
    trainer = L.Trainer(max_steps=args.warmup + args.steps, precision=auto_precision(args.precision),
                        gradient_clip_val=1.0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[timer], num_sanity_val_steps=0)
    trainer.fit(lm, train_dataloaders=loader)
    return timer.seconds


def run_plain(args, loader, compile_flag) -> float:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = make_model_config(args).build().to(device)
    if compile_flag:
        model.compile()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2]},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = optimizer_factory(groups, **({"fused": True} if device.type == "cuda" else {}))
    bf16 = auto_precision(args.precision) == "bf16-mixed"
    batches = iter(loader)
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            synchronize()
            start = time.perf_counter()
        inputs, targets = (t.to(device, non_blocking=True) for t in next(batches))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize()
    return time.perf_counter() - start


def report(name: str, seconds: float, memory: str, args, flops: float, peak: float | None) -> float:
    tokens_per_sec = args.steps * args.batch_size * args.block_size / seconds
    mfu = f"{100 * flops * tokens_per_sec / peak:.1f}%" if peak else "n/a"
    print(f"| {name} | {1000 * seconds / args.steps:.2f} | {tokens_per_sec:,.0f} | {mfu} | {memory} |")
    return tokens_per_sec


def main() -> None:
    args = parse_args()
    on_gpu = torch.cuda.is_available()
    compile_flag = on_gpu if args.compile == "auto" else args.compile == "true"
    if on_gpu:
        torch.set_float32_matmul_precision("high")
    peak = gpu_peak_flops(torch.cuda.get_device_name()) if on_gpu else None
    flops = flops_per_token(make_model_config(args).build())
    with tempfile.TemporaryDirectory() as tmp:
        loader = make_loader(args, Path(tmp))
        results = {}
        for name, run in (("plain PyTorch loop", run_plain), ("Lightning (gpt.lm.CausalLM)", run_lightning)):
            if on_gpu:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            seconds = run(args, loader, compile_flag)
            memory = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if on_gpu else "n/a"
            results[name] = seconds, memory
    device = torch.cuda.get_device_name() if on_gpu else "CPU"
    print(f"\n{args.model}, batch {args.batch_size} x {args.block_size}, precision "
          f"{auto_precision(args.precision)}, compile {compile_flag}, {device}\n")
    print("| loop | ms/step | tokens/s | MFU | peak memory |\n|---|---|---|---|---|")
    rates = [report(name, seconds, memory, args, flops, peak) for name, (seconds, memory) in results.items()]
    print(f"\nLightning / plain tokens/s: {rates[1] / rates[0]:.3f}")


if __name__ == "__main__":
    main()
