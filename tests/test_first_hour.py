"""A newcomer's first hour, as they would meet it: devices that are not there, mistakes in the command line, short
runs that mean something, sweeps that keep their study, a progress line that is current."""

import csv
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import MissingConfigException

from gpt.cli.command_line import hydra_error
from gpt.training.optim import warmup_cosine

from conftest import REPO, SHAKESPEARE, run_script, sweep_tiny, train_tiny

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="about machines without a GPU")


def error_line(result) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return result.stderr.strip().splitlines()[-1]


def test_several_devices_without_a_gpu_are_refused_with_what_they_would_need(tmp_path):
    line = error_line(run_script("train.py", "model=gpt2", "trainer.devices=4", f"hydra.run.dir={tmp_path / 'run'}",
                                 f"paths.data_dir={tmp_path / 'data'}"))
    assert re.fullmatch(r"error: trainer.devices=4 but no GPU was found: 4 CPU processes of this model would need "
                        r"about [\d.]+ GB of memory \([\d.]+ GB each\); to train with CPU processes on purpose: "
                        r"trainer.accelerator=cpu trainer.devices=4", line)
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()  # refused before the data is prepared


def test_cpu_processes_that_do_not_fit_in_memory_are_refused(tmp_path):
    line = error_line(train_tiny(tmp_path / "run", "trainer.accelerator=cpu", "trainer.devices=2",
                                 "trainer.strategy=ddp", "data.batch_size=1000000"))
    assert re.fullmatch(r"error: 2 CPU process\(es\) of this model need about [\d.]+ GB of memory \([\d.]+ GB each\) "
                        r"but [\d.]+ GB is free; use fewer trainer.devices, a smaller data.batch_size or a smaller "
                        r"model", line)


@pytest.mark.smoke
@pytest.mark.parametrize("override, message", [
    ("trainer.max_step=10", "error: trainer.max_step is not a config key; did you mean trainer.max_steps?"),
    ("model=gpt3", "error: model=gpt3 is not an option; choose one of bigram, gpt, gpt2, gpt2-large, gpt2-medium, "
                   "gpt2-xl"),
    ("trainer.max_steps=abc", "error: trainer.max_steps must be a positive integer, got 'abc'"),
    ("+trainer.max_steps=5", "error: trainer.max_steps is already in the config: give it without +, as "
                             "trainer.max_steps=..."),
])
def test_config_mistakes_are_one_line_found_before_any_library_loads(override, message):
    done = subprocess.run([sys.executable, "-X", "importtime", "train.py", override], cwd=REPO, capture_output=True,
                          text=True)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and lines[-1] == message
    imported = {line.split("|")[-1].strip() for line in lines if line.startswith("import time:")}
    assert not {"torch", "lightning"} & imported  # found in a fraction of a second


def test_a_missing_extra_names_its_pip_command():
    error = MissingConfigException("Could not find 'hydra/sweeper/optuna'", "hydra/sweeper/optuna", ["basic"])
    assert hydra_error(error, "train", ["sweep=optuna"]) == "sweep=optuna needs an extra package: pip install -e '.[optuna]'"


def test_warmup_is_at_most_a_tenth_of_a_short_run():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    schedule = warmup_cosine(optimizer, warmup_steps=100, max_steps=100, min_lr=1e-4)
    factors = [schedule.lr_lambdas[0](step) for step in range(100)]
    assert factors.index(max(factors)) == 10 and max(factors) == 1.0  # warmed up after 10 steps, not 100
    long = warmup_cosine(optimizer, warmup_steps=100, max_steps=2000, min_lr=1e-4).lr_lambdas[0]
    assert long(99) < 1.0 == long(100)  # a long run keeps its 100 steps


def read_rows(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_a_short_run_validates_eight_times_and_shows_its_last_val_loss(tmp_path):
    run = tmp_path / "run"
    result = train_tiny(run, "trainer.max_steps=40", "trainer.val_every_n_steps=auto", "trainer.enable_progress_bar=true")
    assert result.returncode == 0, result.stderr
    rows = read_rows(run)
    validations = [(int(r["step"]), float(r["val/loss"])) for r in rows if r["val/loss"]]
    assert [step for step, _ in validations] == [5, 10, 15, 20, 25, 30, 35, 40]
    progress = result.stderr.replace("\r", "\n").strip().splitlines()
    last_bar = [line for line in progress if "40/40" in line][-1]
    assert f"val/loss {validations[-1][1]:.4f}" in last_bar  # the latest validation, not the one before
    assert "on the CPU" in (run / "train.log").read_text()


@pytest.mark.slow  # Optuna's storage: the sweep table and direction tests cover the rest of sweep=optuna
def test_an_optuna_search_keeps_its_study_in_sqlite(tmp_path):
    database = tmp_path / "optuna.db"
    result = sweep_tiny(tmp_path / "sweep", "sweep=optuna", "hydra.sweeper.n_trials=2", "trainer.max_steps=10",
                        "trainer.val_every_n_steps=10", "model.n_embd=32", "model.n_layer=1",
                        f"hydra.sweeper.storage=sqlite:///{database}")
    assert result.returncode == 0, result.stderr[-3000:]
    with sqlite3.connect(database) as db:
        states = [state for (state,) in db.execute("select state from trials")]
    assert states == ["COMPLETE", "COMPLETE"]


# --------------------------------------------------------------------------- the third pass


def small_text(tmp_path) -> Path:
    """The first 8,000 characters of Tiny Shakespeare: 50 paragraphs, 45 of them for training."""
    path = tmp_path / "small.txt"
    path.write_text(SHAKESPEARE.read_text()[:8000])
    return path


def test_data_smaller_than_one_batch_is_refused_with_the_counts_and_the_fix(tmp_path):
    """The README's own masked LM on a text of 50 paragraphs (causal batches of examples take the same path)."""
    text = small_text(tmp_path)
    line = error_line(run_script("train.py", "lm=masked", "data=examples", f"data.text_path={text}",
                                 f"hydra.run.dir={tmp_path / 'run'}", f"paths.data_dir={tmp_path / 'data'}"))
    assert line == (f"error: {text} has 45 training examples per device, fewer than one batch of "
                    "data.batch_size=64; use data.batch_size=22 or less, or more examples")
    assert not (tmp_path / "run").exists()


def test_a_jsonl_file_smaller_than_one_batch_is_refused(tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(f'{{"prompt": "{i}+1=", "answer": "{i + 1}"}}\n' for i in range(50)))
    line = error_line(run_script("train.py", "data=jsonl", f"data.text_path={qa}", f"hydra.run.dir={tmp_path / 'r'}",
                                 f"paths.data_dir={tmp_path / 'data'}"))
    assert "has 45 training examples per device, fewer than one batch of data.batch_size=64" in line


def test_a_bpe_larger_than_its_text_says_which_size_works_and_leaves_nothing(tmp_path):
    line = error_line(run_script("prepare.py", f"data.text_path={small_text(tmp_path)}", "data.tokenizer=bpe",
                                 "data.vocab_size=4096", f"paths.data_dir={tmp_path / 'data'}"))
    found = re.fullmatch(r"error: data.vocab_size=4096 is more than this training text supports: at most (\d+) "
                         r"tokens \(the 256 bytes, the (\d+) merges it has, 3 special tokens\); use "
                         r"data.vocab_size=(\d+) or less, or more text", line)
    assert found and int(found[1]) == int(found[3]) == 256 + int(found[2]) + 3
    assert not (tmp_path / "data").exists()  # nor its lock
    works = run_script("prepare.py", f"data.text_path={small_text(tmp_path)}", "data.tokenizer=bpe",
                       f"data.vocab_size={found[1]}", f"paths.data_dir={tmp_path / 'data'}")
    assert works.returncode == 0, works.stderr[-2000:]


@pytest.mark.parametrize("script, has", [
    ("train.py", ["Config groups", "model: bigram, gpt, gpt2", "global_batch_size"]),
    ("sample.py", ["ckpt_path: ???", "temperature"]),
    ("prepare.py", ["data: arithmetic, corpus, examples, jsonl"]),
    ("export.py", ["out_dir: ???", "overwrite"]),
    ("eval.py", ["tasks: null", "text_file"]),
    ("make_pairs.py", ["ckpt_path: ???", "samples: 8", "data: arithmetic, corpus, examples, jsonl"]),
    ("serve.py", ["ckpt_path: ???", "api_key", "max_batch_size: 16"]),
])
def test_each_entry_points_help_lists_what_it_takes(script, has):
    result = run_script(script, "--help")
    assert result.returncode == 0 and all(text in result.stdout for text in has), result.stdout
    if script != "train.py":
        assert "model: bigram" not in result.stdout and "trainer" not in result.stdout


def test_output_to_a_file_is_plain_lines_and_the_log_ends_with_the_best(tmp_path):
    run = tmp_path / "run"
    result = train_tiny(run, "trainer.max_steps=40", "trainer.enable_progress_bar=true")
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr  # nothing redrawn in a file or a pipe
    progress = [line for line in result.stderr.splitlines() if line.startswith("step ")]
    assert progress and all(re.fullmatch(r"step \d+/40: train/loss \d\.\d{4}.*, \d\d:\d\d left", p) for p in progress)
    best = result.stdout.strip().splitlines()[-1]
    assert best.startswith("best val/loss") and (run / "train.log").read_text().strip().endswith(best)
