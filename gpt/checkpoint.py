"""Checkpoints written by train.py: the record each carries beside the weights (``CheckpointRecord``), writing a
file safely with a checksum of its tensors, finding the one to resume from, and rebuilding a model from one.

Loading never runs anything stored in a file: ``torch.load`` reads tensors and plain values only
(``weights_only=True``), and the model is rebuilt from an allow-list of config classes with every field checked
(``gpt.configs.ModelConfig.from_record``). No Lightning here: sample.py and export.py read checkpoints without it.
"""

import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gpt import UserError
from gpt.checks import check_init_from
from gpt.configs import ModelConfig
from gpt.files import atomic_writer
from gpt.hf import from_hf, read_hf_state_dict
from gpt.interface import TokenModel
from gpt.tokenizers import Tokenizer, tokenizer_from_dict

log = logging.getLogger(__name__)

RECORD_KEY = "gpt"
CHECKSUM_KEY = "tensor_checksum"
# checkpoints written before the model record had the Hydra node of the model, named by its config class then
RENAMED_CONFIG_CLASSES = {"gpt.model.GPTConfig": "gpt.configs.GPTConfig",
                          "gpt.model.BigramConfig": "gpt.configs.BigramConfig"}


@dataclass
class CheckpointRecord:
    """What train.py stores in a checkpoint beside the weights: the model's config, the tokenizer (as
    ``Tokenizer.to_dict()``), the run's resolved config (for people to read; never instantiated) and the W&B run id,
    which a resumed run continues."""

    model: ModelConfig
    tokenizer: dict
    config: dict = field(default_factory=dict)
    wandb_id: str | None = None

    def write_into(self, checkpoint: dict) -> None:
        checkpoint[RECORD_KEY] = {"model": self.model.to_record(), "tokenizer": self.tokenizer, "config": self.config,
                                  "wandb_id": self.wandb_id}

    @classmethod
    def read_from(cls, checkpoint: dict, where: str) -> "CheckpointRecord":
        """The record of a loaded checkpoint; a UserError naming ``where`` if anything in it is not as written."""
        data = checkpoint.get(RECORD_KEY)
        if not isinstance(data, dict) or not isinstance(data.get("tokenizer"), dict):
            raise UserError(f"{where} was not written by this project's train.py (it has no model or tokenizer record)")
        config, wandb_id = data.get("config", {}), data.get("wandb_id")
        if not isinstance(config, dict) or not isinstance(wandb_id, (str, type(None))):
            raise UserError(f"{where}: its run config or W&B id is not of the type train.py writes")
        model = data["model"] if "model" in data else old_model_record(config, data["tokenizer"], where)
        return cls(ModelConfig.from_record(model, where), data["tokenizer"], config, wandb_id)

    def build_tokenizer(self) -> Tokenizer:
        return tokenizer_from_dict(self.tokenizer)


def old_model_record(config: dict, tokenizer: dict, where: str) -> dict:
    """The model record of a checkpoint written before records had one: its run config's model node (whose
    ``_target_`` names the config class: looked up, never imported) and the tokenizer's vocabulary size."""
    node = config.get("model")
    if not isinstance(node, dict):
        raise UserError(f"{where}: the checkpoint has no model config")
    name = node.get("_target_")
    fields = {key: value for key, value in node.items() if key != "_target_"}
    return {"class": RENAMED_CONFIG_CLASSES.get(name, name),
            "fields": {**fields, "vocab_size": tokenizer_from_dict(tokenizer).vocab_size}}


# --------------------------------------------------------------------------- the file: written whole, checked on load


def save_checkpoint_file(checkpoint: dict, path: str | Path) -> None:
    """``torch.save`` with a checksum of every tensor, through a temporary file beside ``path``, so that a process
    killed while saving (or a full disk) leaves the previous checkpoint whole."""
    checkpoint[CHECKSUM_KEY] = tensor_checksum(checkpoint)
    try:
        with atomic_writer(path) as f:
            write_checkpoint(checkpoint, f, path)
    except OSError as e:  # the file could not be made, flushed or renamed
        raise UserError(f"could not save checkpoint {path}: {e.strerror or e}; the previous one is kept") from None


def write_checkpoint(checkpoint: dict, f, path: str | Path) -> None:
    """``torch.save`` into ``f``; a failed write names its cause. torch.save reports it as a RuntimeError of its own
    (``unexpected pos ...``) whose context is the OSError that says what happened (No space left on device)."""
    try:
        torch.save(checkpoint, f)
    except (OSError, RuntimeError) as e:
        cause = next((error for error in exception_chain(e) if isinstance(error, OSError)), e)
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else first_line(cause)
        raise UserError(f"could not save checkpoint {path}: {reason}; the previous one is kept") from None


def exception_chain(error: BaseException) -> Iterator[BaseException]:
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def tensor_checksum(checkpoint: dict) -> int:
    """CRC-32 of the bytes of every tensor in the checkpoint, in order (the checksum itself left out)."""
    crc = 0
    for tensor in tensors_in({key: value for key, value in checkpoint.items() if key != CHECKSUM_KEY}):
        data = tensor.detach().cpu().contiguous().view(-1)
        crc = zlib.crc32(data.view(torch.uint8).numpy() if data.numel() else b"", crc)
    return crc


def tensors_in(value) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from tensors_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from tensors_in(item)


def load_checkpoint(path: str | Path, verify: bool = True) -> tuple[dict, CheckpointRecord]:
    """(the checkpoint, its record), or a UserError naming what is wrong with the file. ``verify=False`` maps the
    tensors instead of reading them, and skips the checksum: a quick look at the record."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}; pass ckpt_path=<run dir>/checkpoints/best.ckpt")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=not verify)
    except Exception as e:
        raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__}); it may be truncated, or hold "
                        "more than tensors and plain values") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise UserError(f"{path} was not written by this project's train.py (it has no state_dict)")
    if verify and CHECKSUM_KEY in checkpoint and checkpoint[CHECKSUM_KEY] != tensor_checksum(checkpoint):
        raise UserError(f"{path} is corrupt: its tensors do not match the checksum saved with them; use another "
                        "checkpoint of the run")
    return checkpoint, CheckpointRecord.read_from(checkpoint, str(path))


def find_resume_checkpoint(checkpoint_dir: Path, verify: bool = True) -> tuple[Path, dict, CheckpointRecord]:
    """(path, contents, record) of the checkpoint to resume from: ``last.ckpt``, or, if it is unreadable (a link
    whose target is gone, a truncated or corrupt file), the newest readable one, with a warning."""
    candidates = sorted(checkpoint_dir.glob("*.ckpt"), key=lambda p: (p.name != "last.ckpt", -p.lstat().st_mtime))
    for path in candidates:
        try:
            checkpoint, record = load_checkpoint(path, verify)
        except UserError as e:
            if verify:
                log.warning("skipping %s: %s", path.name, e)
            continue
        if path.name != "last.ckpt" and verify:
            log.warning("resuming from %s instead of last.ckpt", path)
        return path, checkpoint, record
    raise UserError(f"no readable checkpoint in {checkpoint_dir} to resume from; "
                    "run in the directory of an earlier run (hydra.run.dir=...) or pass ckpt_path=<file>")


def resume_checkpoint(ckpt_path: str, run_dir: str | Path, verify: bool = True) -> tuple[Path, dict, CheckpointRecord]:
    """(path, contents, record) of ``ckpt_path``: a file, or ``last``, the newest readable one of ``run_dir``."""
    if ckpt_path == "last":
        return find_resume_checkpoint(Path(run_dir) / "checkpoints", verify)
    return Path(ckpt_path), *load_checkpoint(ckpt_path, verify)


def model_state(state_dict: dict) -> dict:
    """The plain model's weights from a LightningModule state dict; keys of a ``torch.compile``d model (with
    ``_orig_mod.``, as a user's own compiled module saves them) load too."""
    return {key.removeprefix("model.").replace("_orig_mod.", ""): value for key, value in state_dict.items()
            if key.startswith("model.")}


def model_from_checkpoint(path: str | Path) -> tuple[TokenModel, Tokenizer, CheckpointRecord]:
    """(model in eval mode, tokenizer, record) from a checkpoint."""
    checkpoint, record = load_checkpoint(path)
    tokenizer = record.build_tokenizer()
    model = record.model.build()
    load_weights(model, model_state(checkpoint["state_dict"]), f"ckpt_path={path}")
    return model.eval(), tokenizer, record


def load_weights(model: TokenModel, state: dict, source: str) -> None:
    """Load ``state`` into ``model``, or stop naming the first tensor that does not fit."""
    for name, tensor in model.state_dict().items():
        if name not in state or state[name].shape != tensor.shape:
            found = tuple(state[name].shape) if name in state else "nothing"
            raise UserError(f"{source} does not fit the model: {name} is {found}, the model expects "
                            f"{tuple(tensor.shape)}; choose the model config it was trained with")
    model.load_state_dict(state)


def check_tokenizer(saved: dict, tokenizer: Tokenizer, what: str) -> None:
    """Stop when a checkpoint was trained on other token ids than the current data."""
    if saved != tokenizer.to_dict():
        saved_tokenizer = tokenizer_from_dict(saved)
        raise UserError(f"{what} was trained with the {saved_tokenizer.kind} tokenizer ({saved_tokenizer.vocab_size} "
                        f"tokens) but the data uses the {tokenizer.kind} tokenizer ({tokenizer.vocab_size} tokens); "
                        "use the same data.tokenizer (and the same training text for char/bpe)")


def check_same_model(record: CheckpointRecord, model_config: ModelConfig, what: str) -> None:
    """Stop, naming each differing key, when a resumed run's model is not the checkpoint's (the vocabulary's size
    comes from the data: ``check_tokenizer`` compares the tokenizers)."""
    differences = [d for d in model_config.differences(record.model) if not d.startswith("model.vocab_size:")]
    if differences:
        raise UserError(f"{what} holds another model: {'; '.join(differences)}; resume with the model config it "
                        "was trained with")


def load_initial_weights(model: TokenModel, source: str, tokenizer: Tokenizer) -> None:
    """Start from existing weights (``init_from=``): one of our checkpoints, or Hugging Face GPT-2 weights.
    A longer context in the source is cropped to the model's block_size."""
    check_init_from(source)
    if str(source).endswith(".ckpt"):
        checkpoint, record = load_checkpoint(source)
        check_tokenizer(record.tokenizer, tokenizer, f"init_from={source}")
        state = model_state(checkpoint["state_dict"])
        if "wpe.weight" in state:
            state["wpe.weight"] = state["wpe.weight"][: model.block_size]
    else:
        if tokenizer.kind != "gpt2":
            raise UserError(f"init_from={source}: GPT-2 weights need data.tokenizer=gpt2, not {tokenizer.kind}")
        state = from_hf(read_hf_state_dict(source), model)
    load_weights(model, state, f"init_from={source}")

