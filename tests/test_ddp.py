"""Two processes (DDP over gloo on the CPU): launched by torchrun on a dataset that no process has prepared yet,
and by Lightning, where they train like one process with the same global batch."""

import csv

import pytest
import torch

from gpt.metrics import read_result

from conftest import SHAKESPEARE, TINY_GPT, run_script, train_tiny

DDP_RUN = ["data.batch_size=8", "trainer.max_steps=30", "trainer.val_every_n_steps=10", "data.val_windows=64",
           "trainer.accelerator=cpu", "global_batch_size=16", "trainer.log_every_n_steps=1"]


def val_losses(run_dir, metric: str = "val/loss") -> list[float]:
    with open(run_dir / "metrics.csv") as f:
        return [float(r[metric]) for r in csv.DictReader(f) if r.get(metric)]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    result = train_tiny(one, *DDP_RUN, "trainer.devices=1")
    assert result.returncode == 0, result.stderr
    # a fresh data directory: Lightning's launcher prepares the data before it starts the second process
    result = train_tiny(two, *DDP_RUN, "trainer.devices=2", "trainer.strategy=ddp", f"paths.data_dir={tmp_path / 'fresh'}")
    assert result.returncode == 0, result.stderr
    assert "1 accumulated" in (two / "train.log").read_text() and "2 accumulated" in (one / "train.log").read_text()
    assert len(val_losses(one)) == 3
    assert torch.allclose(torch.tensor(val_losses(one)), torch.tensor(val_losses(two)), atol=1e-5)
    # train/loss: the mean over a step's micro-batches (one process) and over the processes (two) of the same batch
    train_one, train_two = torch.tensor(val_losses(one, "train/loss")), torch.tensor(val_losses(two, "train/loss"))
    assert len(train_one) == 30 and torch.allclose(train_one, train_two, atol=1e-4)
    weights = [torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for run in (one, two)]
    # within 1/30 of one Adam step (lr 3e-3): the two runs add gradients in different orders, and Adam's
    # normalised update magnifies that rounding where gradients are smallest
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-4) for k in weights[0])


def test_global_batch_must_divide(tmp_path):
    result = train_tiny(tmp_path / "run", "data.batch_size=8", "global_batch_size=20")
    assert result.returncode == 2
    assert "global_batch_size=20 is not a multiple of data.batch_size=8 x 1 device(s) = 8" in result.stderr


@pytest.mark.parametrize("data", [["data=text", "data.val_windows=64"],
                                  pytest.param(["data=examples", "data.example=line"], marks=pytest.mark.slow)])
def test_torchrun_on_a_dataset_no_process_has_prepared(tmp_path, data):
    """Both processes start at once and want the same token files: one prepares them, the other waits."""
    text = tmp_path / "new.txt"
    text.write_text(SHAKESPEARE.read_text()[:200_000])
    run, data_dir = tmp_path / "run", tmp_path / "data"
    command = ["torch.distributed.run", "--standalone", "--nproc-per-node=2", "train.py",
               *TINY_GPT, *data, f"data.text_path={text}", "data.tokenizer=bpe", "data.vocab_size=2000",
               "data.batch_size=16", "+trainer.limit_val_batches=4", "trainer.enable_progress_bar=false",
               "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_steps=20",
               "trainer.val_every_n_steps=10", f"paths.data_dir={data_dir}", f"hydra.run.dir={run}"]
    result = run_script("-m", *command, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_result(run)["steps"] == 20
    (prepared,) = [path for path in data_dir.iterdir() if path.is_dir()]
    assert (prepared / "meta.json").is_file() and not list(prepared.glob(".*.tmp"))
