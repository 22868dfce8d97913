"""nanoGPT's CPU recipe as one plain PyTorch process over ``gpt.models.transformer.GPT``: the yardstick that
``bench/bench_train.py --whole-run`` times ``python train.py`` against.

    python bench/nanogpt_cpu.py

The shape and schedule of nanoGPT's README command for a CPU (4 layers, 4 heads, 128 wide, block 64, batch 12,
2000 steps, lr 1e-3 warmed up over 100 steps and decayed to 1e-4, AdamW with betas 0.9/0.99 and weight decay 0.1,
no dropout, gradients clipped at 1.0), with nanoGPT's loop: random windows read from a memmap each step, an
estimate of the train and val loss on 20 random batches every 250 steps, and a checkpoint whenever it improves.
Only torch, numpy and the model are imported, as in nanoGPT.
"""

import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: the package is beside it

from gpt.data.windows import prepare_windows  # noqa: E402
from gpt.models.configs import GPTConfig  # noqa: E402

BLOCK, BATCH, STEPS, WARMUP, LR, MIN_LR = 64, 12, 2000, 100, 1e-3, 1e-4


def lr_at(step: int) -> float:
    if step < WARMUP:
        return LR * step / WARMUP
    progress = (step - WARMUP) / (STEPS - WARMUP)
    return MIN_LR + 0.5 * (1 + math.cos(math.pi * progress)) * (LR - MIN_LR)


def main() -> None:
    torch.manual_seed(1337)
    out = Path(tempfile.mkdtemp())
    meta = prepare_windows(REPO / "data" / "tinyshakespeare.txt", out / "data")

    def get_batch(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        data = np.memmap(out / "data" / f"{split}.bin", dtype=meta["dtype"], mode="r")
        starts = torch.randint(len(data) - BLOCK, (BATCH,))
        x = torch.stack([torch.from_numpy(data[i:i + BLOCK].astype(np.int64)) for i in starts])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + BLOCK].astype(np.int64)) for i in starts])
        return x, y

    model = GPTConfig(vocab_size=meta["vocab_size"], block_size=BLOCK, n_layer=4, n_head=4, n_embd=128).build()
    optimizer = torch.optim.AdamW(model.param_groups(), lr=LR, betas=(0.9, 0.99), weight_decay=0.1)
    best = math.inf
    for step in range(STEPS + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        if step % 250 == 0:
            model.eval()
            with torch.no_grad():
                losses = {split: torch.stack([model(x, labels=y)
                                              for x, y in (get_batch(split) for _ in range(20))]).mean().item()
                          for split in ("train", "val")}
            model.train()
            print(f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}", flush=True)
            if losses["val"] < best and step > 0:
                best = losses["val"]
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, out / "ckpt.pt")
        if step == STEPS:
            break
        x, y = get_batch("train")
        loss = model(x, labels=y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 10 == 0:
            loss.item()
    print(f"best val/loss {best:.4f}")


if __name__ == "__main__":
    main()
