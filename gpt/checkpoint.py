"""Checkpoints written by train.py (each carries the resolved config and the tokenizer): saving one safely,
finding the one to resume from, and loading weights from one. No Lightning here: sample.py and the export
read checkpoints without it."""

import logging
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from gpt import UserError
from gpt.files import atomic_writer
from gpt.hf import from_hf, read_hf_state_dict
from gpt.tokenizers import tokenizer_from_dict

log = logging.getLogger(__name__)


def save_checkpoint_file(checkpoint: dict, path: str | Path) -> None:
    """``torch.save`` through a temporary file beside ``path``, so that a process killed while saving (or a full
    disk) leaves the previous checkpoint whole."""
    try:
        with atomic_writer(path) as f:
            torch.save(checkpoint, f)
    except OSError as e:
        raise UserError(f"could not save checkpoint {path}: {e.strerror or e}; the previous one is kept") from None


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}; pass ckpt_path=<run dir>/checkpoints/best.ckpt")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__}); it may be truncated") from None
    if not isinstance(checkpoint, dict) or "gpt" not in checkpoint:
        raise UserError(f"{path} was not written by this project's train.py (it has no config or tokenizer)")
    return checkpoint


def find_resume_checkpoint(checkpoint_dir: Path) -> tuple[Path, dict]:
    """(path, contents) of the checkpoint to resume from: ``last.ckpt``, or, if it is unreadable, the
    newest readable one."""
    candidates = sorted(checkpoint_dir.glob("*.ckpt"), key=lambda p: (p.name != "last.ckpt", -p.stat().st_mtime))
    for path in candidates:
        try:
            checkpoint = load_checkpoint(path)
        except UserError as e:
            log.warning("skipping %s: %s", path.name, e)
            continue
        if path.name != "last.ckpt":
            log.warning("resuming from %s instead of last.ckpt", path)
        return path, checkpoint
    raise UserError(f"no readable checkpoint in {checkpoint_dir} to resume from; "
                    "run in the directory of an earlier run (hydra.run.dir=...) or pass ckpt_path=<file>")


def uncompiled(state_dict: dict) -> dict:
    """The state dict without the ``_orig_mod.`` that a ``torch.compile``d module puts in its keys."""
    return {key.replace("_orig_mod.", ""): value for key, value in state_dict.items()}


def model_state(state_dict: dict) -> dict:
    """The plain model's weights from a LightningModule state dict, compiled or not."""
    return {key.removeprefix("model."): value for key, value in uncompiled(state_dict).items()
            if key.startswith("model.")}


def model_from_checkpoint(path: str | Path) -> tuple[nn.Module, object, DictConfig]:
    """(model in eval mode, tokenizer, the run's resolved config) from a checkpoint."""
    checkpoint = load_checkpoint(path)
    cfg = OmegaConf.create(checkpoint["gpt"]["config"])
    tokenizer = tokenizer_from_dict(checkpoint["gpt"]["tokenizer"])
    model = instantiate(cfg.model, vocab_size=tokenizer.vocab_size).build()
    model.load_state_dict(model_state(checkpoint["state_dict"]))
    return model.eval(), tokenizer, cfg


def check_tokenizer(saved: dict, tokenizer, what: str) -> None:
    """Stop when a checkpoint was trained on other token ids than the current data."""
    if saved != tokenizer.to_dict():
        saved_tokenizer = tokenizer_from_dict(saved)
        raise UserError(f"{what} was trained with the {saved_tokenizer.kind} tokenizer ({saved_tokenizer.vocab_size} "
                        f"tokens) but the data uses the {tokenizer.kind} tokenizer ({tokenizer.vocab_size} tokens); "
                        "use the same data.tokenizer (and the same training text for char/bpe)")


def load_initial_weights(model: nn.Module, source: str, tokenizer) -> None:
    """Start from existing weights (``init_from=``): one of our checkpoints, or Hugging Face GPT-2 weights.
    A longer context in the source is cropped to the model's block_size."""
    if str(source).endswith(".ckpt"):
        checkpoint = load_checkpoint(source)
        check_tokenizer(checkpoint["gpt"]["tokenizer"], tokenizer, f"init_from={source}")
        state = model_state(checkpoint["state_dict"])
        if "wpe.weight" in state:
            state["wpe.weight"] = state["wpe.weight"][: model.block_size]
    else:
        if tokenizer.kind != "gpt2":
            raise UserError(f"init_from={source}: GPT-2 weights need data.tokenizer=gpt2, not {tokenizer.kind}")
        state = from_hf(read_hf_state_dict(source), model)
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state or state[name].shape != tensor.shape:
            found = tuple(state[name].shape) if name in state else "nothing"
            raise UserError(f"init_from={source} does not fit the model: {name} is {found}, the model "
                            f"expects {tuple(tensor.shape)}; choose the model config it was trained with")
    model.load_state_dict(state)
