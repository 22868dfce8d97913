"""Real runs of train.py and sample.py in subprocesses, as a user runs them."""

import csv
import importlib.util

import pytest
import torch

from gpt.metrics import read_result

from conftest import run_script, train_tiny


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    train = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    return train, val


@pytest.mark.smoke
def test_training_writes_checkpoints_config_and_metrics(tiny_run):
    assert (tiny_run / "checkpoints" / "best.ckpt").is_file()
    assert (tiny_run / "checkpoints" / "last.ckpt").is_file()
    assert "n_layer: 1" in (tiny_run / "config.yaml").read_text()
    train, val = read_metrics(tiny_run)
    assert len(val) == 2 and len(train) >= 5
    assert val[-1] < 3.5 and train[-1] < train[0]  # it learned something (uniform over 68 tokens is 4.22)


@pytest.mark.smoke
def test_sample_from_checkpoint(tiny_run):
    result = run_script("sample.py", f"ckpt_path={tiny_run / 'checkpoints' / 'best.ckpt'}", "prompt=ROMEO:",
                        "num_samples=2", "max_new_tokens=50", "temperature=0.8", "top_k=50", "seed=1")
    assert result.returncode == 0, result.stderr
    samples = result.stdout.split("--- sample ")[1:]
    assert len(samples) == 2 and all(s.split("\n", 1)[1].startswith("ROMEO:") for s in samples)
    assert len(samples[0].split("\n", 1)[1].rstrip("\n")) == len("ROMEO:") + 50


def test_sample_prompt_longer_than_the_context_is_cropped(tiny_run):
    result = run_script("sample.py", f"ckpt_path={tiny_run / 'checkpoints' / 'last.ckpt'}",
                        "prompt=" + "abcdefghij" * 10, "max_new_tokens=5")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("overrides, message", [
    (["prompt='ROMEO€'"], "characters not in the tokenizer's vocabulary: '€'"),
    (["ckpt_path=/nonexistent/best.ckpt"], "checkpoint not found"),
])
def test_sample_bad_input(tiny_run, overrides, message):
    args = [f"ckpt_path={tiny_run / 'checkpoints' / 'best.ckpt'}", *overrides]
    result = run_script("sample.py", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}")


def test_missing_data_file_is_one_line_before_any_library_loads(tmp_path):
    result = train_tiny(tmp_path / "run", "data=text", f"data.text_path={tmp_path / 'missing.txt'}")
    assert result.returncode == 2 and result.stderr.strip() == (
        f"error: data.text_path={tmp_path / 'missing.txt'}: no such file or directory; give a UTF-8 text file or a "
        "directory of *.txt files (a JSONL file for data=jsonl; parquet, JSONL or a saved dataset for data=corpus)")
    assert not (tmp_path / "run").exists()


def test_misspelled_override(tmp_path):
    result = train_tiny(tmp_path / "run", "model.n_layr=2")
    assert result.returncode != 0 and "n_layr" in result.stderr


def test_bigram_trains(tmp_path):
    result = train_tiny(tmp_path / "run", model=["model=bigram", "model.block_size=16"])
    assert result.returncode == 0, result.stderr
    assert "best val/loss" in result.stdout


def test_architecture_options_train_save_and_sample(tmp_path):
    run = tmp_path / "run"
    result = train_tiny(run, "model.pos=rope", "model.mlp=swiglu", "model.norm=rmsnorm", "model.bias=false")
    assert result.returncode == 0, result.stderr
    result = run_script("sample.py", f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", "prompt=ROMEO:",
                        "max_new_tokens=40")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n", 1)[1].startswith("ROMEO:")


def test_tensorboard_logger_writes_events_or_asks_for_its_package(tmp_path):
    result = train_tiny(tmp_path / "run", "logger=tensorboard")
    if any(importlib.util.find_spec(package) for package in ("tensorboard", "tensorboardX")):
        assert result.returncode == 0, result.stderr
        assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    else:
        assert result.returncode == 2
        assert result.stderr.strip().splitlines()[-1] == (
            "error: logger.tensorboard needs the tensorboard package: pip install tensorboard")


def test_fast_dev_run_writes_nothing(tmp_path):
    run = tmp_path / "run"
    result = train_tiny(run, "debug=fdr")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("fast dev run passed")
    assert not run.exists()  # not even an empty directory with an empty log


def test_a_short_run_validates_and_checkpoints_at_its_last_step(tmp_path):
    """45 steps, validation every 30: at 30, and at 45 where the run ends. The output is one progress line."""
    run = tmp_path / "run"
    result = train_tiny(run, "trainer.max_steps=45", "trainer.enable_progress_bar=true")
    assert result.returncode == 0, result.stderr
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows if r["val/loss"]] == [30, 45]
    assert [int(r["step"]) for r in rows] == [10, 20, 30, 40, 45]  # one row per step, counted from 1
    assert read_result(run)["steps"] == 45
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 45
    output = result.stdout + result.stderr
    assert "45/45" in output and "tok/s" in output and "val/loss" in output
    for noise in ("Epoch", "litlogger", "LeafSpec", "GPU available", "TPU available", "FLOPs", "Warning"):
        assert noise not in output


@pytest.mark.parametrize("command, message", [
    (["train.py", "data=text"], "error: data.text_path is required; give it on the command line: python train.py "
                                "data.text_path=..."),
    (["sample.py"], "error: ckpt_path is required; give it on the command line: python sample.py ckpt_path=..."),
    (["prepare.py"], "error: data.text_path is required; give it on the command line: python prepare.py "
                     "data.text_path=..."),
    (["export.py"], "error: ckpt_path, out_dir are required; give them on the command line: python export.py "
                    "ckpt_path=... out_dir=..."),
    (["prepare.py", "data.text_path=data/tinyshakespeare.txt", "data.tokenizer=bpe"],
     "error: data.tokenizer=bpe needs data.vocab_size, e.g. data.vocab_size=4096"),  # the keys of train.py
    (["prepare.py", "text_path=data/tinyshakespeare.txt"], "error: text_path is now data.text_path"),
])
def test_missing_values_are_one_line_errors(command, message):
    result = run_script(*command)
    assert result.returncode == 2 and result.stderr.strip() == message


def test_any_prompt_text_works_unquoted(tiny_run):
    ckpt = f"ckpt_path={tiny_run / 'checkpoints' / 'best.ckpt'}"
    result = run_script("sample.py", ckpt, "prompt=To be, or not to be", "max_new_tokens=5")
    assert result.returncode == 0 and "To be, or not to be" in result.stdout, result.stderr
    result = run_script("sample.py", ckpt, "prompt=Roméo")  # Hydra's grammar takes it: only the vocabulary cannot
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: characters not in the tokenizer's vocabulary: 'é'; use only characters "
                                     "that occur in the training text")
