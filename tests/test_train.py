"""Real runs of train.py and sample.py in subprocesses, as a user runs them."""

import csv
import importlib.util

import pytest

from conftest import run_script, train_tiny


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    train = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    return train, val


def test_training_writes_checkpoints_config_and_metrics(tiny_run):
    assert (tiny_run / "checkpoints" / "best.ckpt").is_file()
    assert (tiny_run / "checkpoints" / "last.ckpt").is_file()
    assert "n_layer: 1" in (tiny_run / "config.yaml").read_text()
    train, val = read_metrics(tiny_run)
    assert len(val) == 2 and len(train) >= 5
    assert val[-1] < 3.5 and train[-1] < train[0]  # it learned something (uniform over 68 tokens is 4.22)


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


def test_missing_data_file(tmp_path):
    result = train_tiny(tmp_path / "run", "data=text", f"data.text_path={tmp_path / 'missing.txt'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: data file not found")


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
    assert not (run / "checkpoints").exists() and not (run / "result.json").exists()
