"""Two processes (DDP over gloo on the CPU) train like one process with the same global batch."""

import csv

import torch

from conftest import train_tiny

DDP_RUN = ["data.batch_size=8", "trainer.max_steps=30", "trainer.val_check_interval=10", "data.val_windows=64",
           "trainer.accelerator=cpu", "global_batch_size=16", "trainer.log_every_n_steps=1"]


def val_losses(run_dir) -> list[float]:
    with open(run_dir / "metrics.csv") as f:
        return [float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    result = train_tiny(one, *DDP_RUN, "trainer.devices=1")
    assert result.returncode == 0, result.stderr
    result = train_tiny(two, *DDP_RUN, "trainer.devices=2", "trainer.strategy=ddp")
    assert result.returncode == 0, result.stderr
    assert "1 accumulated" in (two / "train.log").read_text() and "2 accumulated" in (one / "train.log").read_text()
    assert len(val_losses(one)) == 3
    assert torch.allclose(torch.tensor(val_losses(one)), torch.tensor(val_losses(two)), atol=1e-5)
    weights = [torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for run in (one, two)]
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-5) for k in weights[0])


def test_global_batch_must_divide(tmp_path):
    result = train_tiny(tmp_path / "run", "data.batch_size=8", "global_batch_size=20")
    assert result.returncode == 2
    assert "global_batch_size=20 is not a multiple of data.batch_size=8 x 1 device(s) = 8" in result.stderr
