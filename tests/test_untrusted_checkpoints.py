"""A crafted checkpoint is refused in one line before any of it reaches native code or an allocation of the size it
asks for: the optimizer's moments and the generator's state are checked against the run's own, the model record
against the stored tensors (on the meta device), the tokenizer record field by field, and a checkpoint of this
version without its checksum is refused. Real crafted files, real processes."""

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from gpt import UserError
from gpt.training.checkpoint import tensor_checksum
from gpt.training.run import train

from conftest import SHORT_RUN, TINY_GPT, compose_train, run_script, train_tiny
from test_safety import one_error_line


def craft(source: Path, out: Path, change: Callable[[dict], None], checksum: bool = True) -> Path:
    """A copy of a real checkpoint with ``change`` made to it, and (``checksum``) its checksum computed again, as
    anyone can: only the change is wrong."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    change(checkpoint)
    if checksum:
        checkpoint["tensor_checksum"] = tensor_checksum(checkpoint)
    torch.save(checkpoint, out)
    return out


def optimizer_moment(checkpoint: dict) -> None:
    checkpoint["optimizer_states"][0]["state"][0]["exp_avg"] = torch.zeros(7)  # fused AdamW wrote past it: SIGSEGV


def rng_state(checkpoint: dict) -> None:
    checkpoint["rng"]["torch"] = torch.zeros(3, dtype=torch.uint8)


def wrong_shaped_weight(checkpoint: dict) -> None:
    checkpoint["state_dict"]["model.blocks.0.mlp.fc.weight"] = torch.zeros(128, 31)


def scheduler_step(checkpoint: dict) -> None:
    checkpoint["lr_schedulers"][0]["step"] = 5  # would replace the scheduler's method


@pytest.mark.parametrize("change, message", [
    (optimizer_moment, "the optimizer's exp_avg of parameter 0 is (7,), the parameter (68, 32)"),
    (wrong_shaped_weight, "its weights do not match its model record: blocks.0.mlp.fc.weight is (128, 31), the model "
                          "expects (128, 32)"),
], ids=["optimizer moment", "wrong-shaped weight"])
def test_a_crafted_training_state_is_refused_before_lightning_restores_it(tiny_run, tmp_path, change, message):
    crafted = craft(tiny_run / "checkpoints" / "best.ckpt", tmp_path / "crafted.ckpt", change)
    line = one_error_line(train_tiny(tmp_path / "run", f"ckpt_path={crafted}", "trainer.max_steps=80"))
    assert message in line and "the file was changed after train.py wrote it" in line
    assert not (tmp_path / "run" / "metrics.csv").exists()  # refused before anything was written


@pytest.mark.parametrize("change, message", [
    (rng_state, "rng is not the random number generator state train.py saves"),
    (scheduler_step, "lr_schedulers[0] has keys that"),
], ids=["rng state", "scheduler attribute"])
def test_every_part_of_a_training_state_is_checked(tiny_run, tmp_path, change, message):
    """The same check as above, for the other parts Lightning restores, in this process."""
    crafted = craft(tiny_run / "checkpoints" / "best.ckpt", tmp_path / "crafted.ckpt", change)
    cfg = compose_train(*TINY_GPT, *SHORT_RUN, f"ckpt_path={crafted}", "trainer.max_steps=80",
                        f"paths.data_dir={tiny_run.parent / 'data'}", tmp_path=tmp_path / "run")
    with pytest.raises(UserError, match=re.escape(message)):
        train(cfg)


def record_field(name: str, value) -> Callable[[dict], None]:
    def change(checkpoint: dict) -> None:
        checkpoint["gpt"]["model"]["fields"][name] = value
    return change


def tokenizer_field(kind: str, **fields) -> Callable[[dict], None]:
    def change(checkpoint: dict) -> None:
        if kind == "bpe":
            checkpoint["gpt"]["tokenizer"]["encoding"].update(fields)
        else:
            checkpoint["gpt"]["tokenizer"].update(fields)
    return change


def bpe_rank(checkpoint: dict) -> None:
    checkpoint["gpt"]["tokenizer"]["encoding"]["mergeable_ranks"][-1][1] = 10 ** 12


def no_checksum(checkpoint: dict) -> None:
    del checkpoint["tensor_checksum"]


@pytest.mark.parametrize("change, message", [
    (record_field("n_embd", 10 ** 9), "its model record does not match its weights (building it failed: Storage size "
                                      "calculation overflowed"),
    (record_field("n_embd", 10 ** 6), "its weights do not match its model record: wte.weight is (68, 32), the model "
                                      "expects (68, 1000000)"),
    (record_field("n_layer", 10 ** 6), "its model record describes more tensors than the 17 it stores"),
    (tokenizer_field("char", chars=12345), "the saved char tokenizer is corrupt (chars must be a text of distinct "
                                           "characters, got int)"),
    (tokenizer_field("char", specials=[1, 2]), "the saved char tokenizer is corrupt (specials must be a list of "
                                               "distinct non-empty texts"),
    (tokenizer_field("char", chars="abc"), "its char tokenizer has 6 tokens but its model record a vocabulary of 68"),
], ids=["n_embd 1e9", "n_embd 1e6", "n_layer 1e6", "chars", "specials", "vocabulary"])
def test_a_crafted_record_is_refused_before_the_model_is_built(tiny_run, tmp_path, change, message):
    crafted = craft(tiny_run / "checkpoints" / "best.ckpt", tmp_path / "crafted.ckpt", change)
    line = one_error_line(run_script("sample.py", f"ckpt_path={crafted}", "max_new_tokens=5", timeout=60), True)
    assert line.startswith(f"error: {crafted}: {message}"), line
    if "more tensors" in message:  # export.py and init_from read the record the same way, with the same checks
        line = one_error_line(run_script("export.py", f"ckpt_path={crafted}", f"out_dir={tmp_path / 'export'}",
                                         timeout=60), only_line=True)
        assert line.startswith(f"error: {crafted}: {message}"), line
        assert message in one_error_line(train_tiny(tmp_path / "run", f"init_from={crafted}"))


@pytest.fixture(scope="module")
def bpe_checkpoint(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("bpe") / "run"
    result = train_tiny(run, "data.tokenizer=bpe", "data.vocab_size=300", "trainer.max_steps=2")
    assert result.returncode == 0, result.stderr
    return run / "checkpoints" / "best.ckpt"


@pytest.mark.parametrize("change, message", [
    (bpe_rank, "ranks must be 0 to 299, one per token; the largest is 1000000000000"),
    (tokenizer_field("bpe", pattern="x"), "pattern 'x' is not the pre-tokenizer this project writes"),
    (tokenizer_field("bpe", pattern="(a+)+$"), "pattern '(a+)+$' is not the pre-tokenizer this project writes"),
], ids=["rank 1e12", "pattern matching nothing", "backtracking pattern"])
def test_a_crafted_bpe_tokenizer_is_refused_when_its_record_is_read(bpe_checkpoint, tmp_path, change, message):
    crafted = craft(bpe_checkpoint, tmp_path / "crafted.ckpt", change)
    line = one_error_line(run_script("sample.py", f"ckpt_path={crafted}", "max_new_tokens=5", "prompt=aaaa"),
                          only_line=True)
    assert line == f"error: {crafted}: the saved bpe tokenizer is corrupt ({message}); the file was changed after " \
                   "train.py wrote it"


def test_a_checkpoint_of_this_version_without_its_checksum_is_refused(tiny_run, tmp_path):
    crafted = craft(tiny_run / "checkpoints" / "best.ckpt", tmp_path / "crafted.ckpt", no_checksum, checksum=False)
    line = one_error_line(run_script("sample.py", f"ckpt_path={crafted}", "max_new_tokens=5"), only_line=True)
    assert re.fullmatch(r"error: .*crafted\.ckpt has no tensor_checksum, which train\.py saves with every checkpoint: "
                        r"the file was changed after it was written; use another checkpoint of the run", line)
