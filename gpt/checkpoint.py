"""Reading checkpoints written by train.py: they carry the resolved config and the tokenizer."""

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from gpt import UserError
from gpt.tokenizers import tokenizer_from_dict


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


def model_state(state_dict: dict) -> dict:
    """The plain model's weights from a LightningModule state dict, compiled (``_orig_mod.``) or not."""
    return {key.removeprefix("model.").replace("_orig_mod.", ""): value
            for key, value in state_dict.items() if key.startswith("model.")}


def model_from_checkpoint(path: str | Path) -> tuple[nn.Module, object, DictConfig]:
    """(model in eval mode, tokenizer, the run's resolved config) from a checkpoint."""
    checkpoint = load_checkpoint(path)
    cfg = OmegaConf.create(checkpoint["gpt"]["config"])
    tokenizer = tokenizer_from_dict(checkpoint["gpt"]["tokenizer"])
    model = instantiate(cfg.model, vocab_size=tokenizer.vocab_size).build()
    model.load_state_dict(model_state(checkpoint["state_dict"]))
    return model.eval(), tokenizer, cfg
