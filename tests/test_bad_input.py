"""Every entry point answers bad input with one clear line and keeps what was written."""

import random

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException, InstantiationException
from hydra.utils import instantiate
from omegaconf.errors import OmegaConfBaseException

from gpt import UserError
from gpt.cli.checks import TRAIN, check_model, check_values
from gpt.data.tokenizers import fit_tokenizer, tokenizer_from_dict
from gpt.data.windows import prepare_windows

from conftest import REPO, SHAKESPEARE, compose_train, run_script, train_tiny


def last_line(result) -> str:
    return result.stderr.strip().splitlines()[-1]


def check_config(cfg) -> None:
    """What train.py checks before it loads any library."""
    check_values(cfg, TRAIN)
    check_model(cfg.model)


@pytest.mark.parametrize("override, message", [
    ("optim.lr=0", "optim.lr must be a positive number, got 0"),
    ("trainer.max_steps=0", "trainer.max_steps must be a positive integer, got 0"),
    ("model.block_size=0", "model.block_size must be a positive integer, got 0"),
    ("trainer.val_every_n_steps=0", "trainer.val_every_n_steps must be a positive integer, or auto, got 0"),
])
def test_config_checks(tmp_path, override, message):
    with pytest.raises(UserError, match=message):
        check_config(compose_train(override, tmp_path=tmp_path))


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=-2", "data.batch_size must be a positive integer, got -2"),
    ("model.pos=alibi", "model.pos='alibi' is not a valid option; choose one of learned, rope"),
])
def test_train_bad_values(tmp_path, override, message):
    result = train_tiny(tmp_path / "run", override)
    assert result.returncode == 2
    assert last_line(result).startswith(f"error: {message}")
    assert "Traceback" not in result.stderr


def test_unwritable_run_dir():
    result = run_script("train.py", "hydra.run.dir=/proc/no/such/dir")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert last_line(result).startswith("error: cannot write to the output directory /proc/no/such/dir")


def test_unknown_experiment_lists_the_valid_ones(tmp_path):
    result = train_tiny(tmp_path / "run", "experiment=nope")
    assert result.returncode == 2 and result.stderr.strip() == \
        "error: experiment=nope is not an option; choose one of addition, addition_rl, addition_strong, addition_weak, mlm_char, shakespeare_char"


def test_nonfinite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    result = train_tiny(run, "optim.lr=1e6", "scheduler.warmup_steps=0", "trainer.gradient_clip_val=null",
                        "callbacks.checkpoints.every_n_train_steps=1")
    assert result.returncode == 2
    line = last_line(result)
    assert line.startswith("error: the loss or its gradient was NaN or infinite in") and "last good checkpoint is" in line
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] >= 1
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())  # bad steps changed nothing


def test_prepare_bad_input(tmp_path):
    result = run_script("prepare.py", "data.text_path=/nonexistent.txt")
    assert result.returncode == 2 and last_line(result).startswith("error: data file not found: /nonexistent.txt")
    with pytest.raises(UserError, match="data.val_fraction must be between 0 and 1"):
        prepare_windows(SHAKESPEARE, tmp_path, val_fraction=1.5)
    with pytest.raises(UserError, match="data.tokenizer='wordpiece' is not a known tokenizer"):
        prepare_windows(SHAKESPEARE, tmp_path, tokenizer="wordpiece")
    with pytest.raises(UserError, match="vocab_size must be at least 259"):
        prepare_windows(SHAKESPEARE, tmp_path, tokenizer="bpe", vocab_size=100)


def test_sample_bad_numbers(tiny_run):
    result = run_script("sample.py", f"ckpt_path={tiny_run / 'checkpoints' / 'best.ckpt'}", "num_samples=0")
    assert result.returncode == 2 and last_line(result).startswith("error: num_samples must be a positive integer, got 0")


def test_fuzz_tokenizers_with_random_bytes():
    rng = random.Random(0)
    char = fit_tokenizer("char", [SHAKESPEARE.read_text()[:20_000]])
    gpt2 = fit_tokenizer("gpt2", [])
    bpe = tokenizer_from_dict(fit_tokenizer("bpe", [SHAKESPEARE.read_text()[:50_000]], vocab_size=300).to_dict())
    for _ in range(200):
        text = bytes(rng.randrange(256) for _ in range(rng.randrange(40))).decode("utf-8", errors="replace")
        for tok in (gpt2, bpe):
            assert tok.decode(tok.encode(text)) == text
        try:
            assert char.decode(char.encode(text)) == text
        except UserError as e:
            assert "not in the tokenizer's vocabulary" in str(e)
    for garbage in ({}, {"kind": "bpe", "encoding": {"mergeable_ranks": 5}}, {"kind": "char"}, {"kind": 3}):
        with pytest.raises(UserError):
            tokenizer_from_dict(garbage)


FUZZ_VALUES = {
    "model.n_layer": ["0", "-1", "2", "x", "1.5"], "model.n_head": ["0", "3", "4"], "model.n_embd": ["0", "48", "64"],
    "model.block_size": ["0", "-8", "16", "null"], "model.dropout": ["-0.1", "0.5", "1", "abc"],
    "model.pos": ["rope", "alibi", "1"], "model.mlp": ["swiglu", "relu"], "model.norm": ["rmsnorm", "batchnorm"],
    "optim.lr": ["0", "-1", "1e-3", "fast"], "trainer.max_steps": ["0", "-1", "10"], "data.batch_size": ["0", "4", "x"],
    "data.tokenizer": ["char", "gpt2", "xyz"], "experiment": ["shakespeare_char", "missing"], "model": ["bigram", "gpt2"],
}


def test_fuzz_config_composition(tmp_path):
    """Random overrides give a working config or a clean error, never a traceback from deep inside."""
    rng = random.Random(0)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"), torch.device("meta"):
        for _ in range(30):
            keys = rng.sample(sorted(FUZZ_VALUES), rng.randrange(1, 5))
            overrides = [f"{k}={rng.choice(FUZZ_VALUES[k])}" for k in keys]
            try:
                cfg = compose("train", overrides=[f"paths.root_dir={REPO}", f"paths.output_dir={tmp_path}", *overrides])
                check_config(cfg)
                instantiate(cfg.model, vocab_size=65).build()
                instantiate(cfg.data, block_size=cfg.model.block_size)
            except (UserError, HydraException, OmegaConfBaseException) as e:
                if isinstance(e, InstantiationException):
                    assert isinstance(e.__cause__, UserError), (overrides, e)
