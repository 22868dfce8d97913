"""Checkpoints written by train.py: the record each carries beside the weights (``CheckpointRecord``), writing a
file safely with a checksum of its tensors, finding the one to resume from, and rebuilding a model from one.

Loading never runs anything stored in a file: ``torch.load`` reads tensors and plain values only
(``weights_only=True``), and the model is rebuilt from an allow-list of config classes with every field checked
(``gpt.models.configs.ModelConfig.from_record``). No Lightning here: sample.py and export.py read checkpoints without it.
"""

import logging
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.modules.module import (register_module_buffer_registration_hook,
                                     register_module_parameter_registration_hook)

from gpt import UserError
from gpt.data.tokenizers import Tokenizer, tokenizer_from_dict
from gpt.files import atomic_writer
from gpt.models.configs import ModelConfig
from gpt.models.hf import gpt2_from_hf, read_hf_state_dict
from gpt.models.interface import TokenModel

log = logging.getLogger(__name__)

RECORD_KEY = "gpt"
CHECKSUM_KEY = "tensor_checksum"
CHANGED = "the file was changed after train.py wrote it"  # how a refused checkpoint's error ends

@dataclass
class CheckpointRecord:
    """What train.py stores in a checkpoint beside the weights: the model's config, the tokenizer (as
    ``Tokenizer.to_dict()``), the run's resolved config (for people to read; never instantiated) and the W&B run id,
    which a resumed run continues. ``older_format``: read from a checkpoint written before records had a model
    (main at e454eb4), which carries no checksum."""

    model: ModelConfig
    tokenizer: dict
    config: dict = field(default_factory=dict)
    wandb_id: str | None = None
    older_format: bool = False

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
        try:
            tokenizer = tokenizer_from_dict(data["tokenizer"], fix=CHANGED)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        older = "model" not in data
        model = ModelConfig.from_record(old_model_record(config, tokenizer) if older else data["model"], where)
        if tokenizer.vocab_size != model.vocab_size:
            raise UserError(f"{where}: its {tokenizer.kind} tokenizer has {tokenizer.vocab_size} tokens but its model "
                            f"record a vocabulary of {model.vocab_size}; the file was changed after train.py wrote it")
        return cls(model, data["tokenizer"], config, wandb_id, older)

    def build_tokenizer(self) -> Tokenizer:
        return tokenizer_from_dict(self.tokenizer)


def old_model_record(config: dict, tokenizer: Tokenizer) -> dict | None:
    """The model record of a checkpoint written before records had one: its run config's model node (whose
    ``_target_`` names the config class: looked up, never imported) and the tokenizer's vocabulary size."""
    node = config.get("model")
    if not isinstance(node, dict):
        return None  # ModelConfig.from_record says the record is not one
    name = node.get("_target_")
    fields = {key: value for key, value in node.items() if key != "_target_"}
    return {"class": name, "fields": {**fields, "vocab_size": tokenizer.vocab_size}}


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
    tensors instead of reading them, and skips the checksum: a quick look at the record.

    What is checked, and what it promises: the file holds tensors and plain values only; its record names a model
    class defined in code, with every field of its type; its tokenizer is well formed and as large as the model's
    vocabulary; its weights have the names and shapes of the model the record describes (compared before the model
    is built); and the CRC-32 of its tensors matches the one saved with them. The CRC detects corruption (a bad disk,
    a cut copy), not tampering: anyone can compute it again. A file made to mislead still runs no code and reaches
    no native kernel with a tensor of the wrong shape, but it may hold any weights."""
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
    record = CheckpointRecord.read_from(checkpoint, str(path))
    if verify:
        verify_checksum(checkpoint, record, path)
    check_weights_fit_record(record, model_state(checkpoint["state_dict"]), str(path))
    return checkpoint, record


def verify_checksum(checkpoint: dict, record: CheckpointRecord, path: Path) -> None:
    """Refuse a checkpoint whose tensors changed since they were saved, or whose checksum is gone; a checkpoint
    of the older format, written before there was one, loads with a warning."""
    if CHECKSUM_KEY not in checkpoint:
        if not record.older_format:
            raise UserError(f"{path} has no {CHECKSUM_KEY}, which train.py saves with every checkpoint: the file was "
                            "changed after it was written; use another checkpoint of the run")
        log.warning("%s was written by an older version, without a checksum: its tensors are not verified", path)
    elif checkpoint[CHECKSUM_KEY] != tensor_checksum(checkpoint):
        raise UserError(f"{path} is corrupt: its tensors do not match the checksum saved with them; use another "
                        "checkpoint of the run")


class TooManyTensors(Exception):
    pass


@contextmanager
def registering_at_most(limit: int) -> Iterator[None]:
    """Stop a model's construction (``TooManyTensors``) once it has registered more than ``limit`` parameters and
    buffers: a model record asking for a million layers is refused at the first few."""
    count = 0

    def counted(module, name, tensor):
        nonlocal count
        count += 1
        if count > limit:
            raise TooManyTensors

    hooks = [register_module_parameter_registration_hook(counted), register_module_buffer_registration_hook(counted)]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def check_weights_fit_record(record: CheckpointRecord, state: dict, where: str) -> None:
    """Stop unless ``state`` holds the tensors of the model ``record`` describes. The model is built on the meta
    device, which allocates no memory, and its construction stops once it has made more tensors than are
    stored: a record that does not match its weights is refused before anything the size of the record's model is
    allocated."""
    try:
        with registering_at_most(2 * len(state) + 16), torch.device("meta"):
            expected = record.model.build().state_dict()
    except TooManyTensors:
        raise UserError(f"{where}: its model record describes more tensors than the {len(state)} it stores; "
                        f"{CHANGED}") from None
    except Exception as e:  # a shape no tensor can have (an overflowing size), as torch says it
        raise UserError(f"{where}: its model record does not match its weights (building it failed: "
                        f"{first_line(e)}); {CHANGED}") from None
    if misfit := first_misfit(expected, state):
        raise UserError(f"{where}: its weights do not match its model record: {misfit}; {CHANGED}")


def first_misfit(expected: dict[str, torch.Tensor], state: dict) -> str | None:
    """The first tensor of ``expected`` that ``state`` lacks or holds in another shape, or the first tensor of
    ``state`` that ``expected`` has not, said as ``NAME is (...), the model expects (...)``; None when they fit."""
    for name, tensor in expected.items():
        found = state.get(name)
        if not isinstance(found, torch.Tensor) or found.shape != tensor.shape:
            shape = tuple(found.shape) if isinstance(found, torch.Tensor) else "nothing"
            return f"{name} is {shape}, the model expects {tuple(tensor.shape)}"
    extra = next((name for name in state if name not in expected), None)
    return f"{extra} is not a tensor of the model" if extra else None


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
            if isinstance(key, str) and key.startswith("model.")}


def model_from_checkpoint(path: str | Path) -> tuple[TokenModel, Tokenizer, CheckpointRecord]:
    """(model in eval mode, tokenizer, record) from a checkpoint."""
    checkpoint, record = load_checkpoint(path)
    tokenizer = record.build_tokenizer()
    model = record.model.build()
    load_weights(model, model_state(checkpoint["state_dict"]), f"ckpt_path={path}")
    return model.eval(), tokenizer, record


def load_weights(model: TokenModel, state: dict, source: str) -> None:
    """Load ``state`` into ``model``, or stop naming the first tensor that does not fit."""
    if misfit := first_misfit(model.state_dict(), state):
        raise UserError(f"{source} does not fit the model: {misfit}; choose the model config it was trained with")
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
    """Start from existing weights (``init_from=``): one of our checkpoints, or Hugging Face GPT-2 weights. A
    longer context in the source is cropped to the model's block_size (``crop_block_size``)."""
    if not Path(source).exists():
        raise UserError(f"init_from={source}: no such file or directory; give one of our .ckpt files or a directory "
                        "of Hugging Face GPT-2 weights")
    if str(source).endswith(".ckpt"):
        checkpoint, record = load_checkpoint(source)
        check_tokenizer(record.tokenizer, tokenizer, f"init_from={source}")
        origin = record.model.build()
        load_weights(origin, model_state(checkpoint["state_dict"]), f"init_from={source}")
    else:
        if tokenizer.kind != "gpt2":
            raise UserError(f"init_from={source}: GPT-2 weights need data.tokenizer=gpt2, not {tokenizer.kind}")
        origin = gpt2_from_hf(read_hf_state_dict(source), model.config)
    if origin.block_size > model.block_size:
        origin.crop_block_size(model.block_size)
    load_weights(model, origin.state_dict(), f"init_from={source}")


# --------------------------------------------------------------------------- a resume's training state, checked


def check_training_state(checkpoint: dict, optimizer: torch.optim.Optimizer, scheduler, where: str) -> None:
    """Stop, naming the first value that is not as train.py saves it, before Lightning restores the optimizer, the
    schedule and the random number generator: a fused optimizer step reads its moments without checking their
    shapes, and a wrong one corrupts memory. ``optimizer`` and ``scheduler`` are fresh ones of this run, the
    templates of what the checkpoint must hold."""
    step = checkpoint.get("global_step")
    if type(step) is not int or step < 0:
        raise UserError(f"{where}: global_step is {step!r:.40}, not a step count; {CHANGED}")
    saved = checkpoint.get("optimizer_states")
    if not isinstance(saved, list) or len(saved) != 1 or not isinstance(saved[0], dict):
        raise UserError(f"{where}: optimizer_states is not the one optimizer state train.py saves; {CHANGED}")
    groups = saved[0].get("param_groups")
    check_like(groups, optimizer.state_dict()["param_groups"], f"{where}: optimizer param_groups")
    if not all("params" in group for group in groups):
        raise UserError(f"{where}: an optimizer param group has no params; {CHANGED}")
    check_moments(saved[0].get("state"), [p for group in optimizer.param_groups for p in group["params"]], where)
    schedulers = [scheduler.state_dict()] if scheduler is not None else []
    check_like(checkpoint.get("lr_schedulers", []), schedulers, f"{where}: lr_schedulers")
    if "rng" in checkpoint:
        check_rng(checkpoint["rng"], where)


def check_like(saved, template, where: str) -> None:
    """``saved`` has the structure of ``template``: dicts with keys of the template's (a key of the template may be
    missing: another torch release may save one more or one less), lists of the same length, tensors of the same
    shape and dtype, and numbers, texts, booleans and None where the template has them."""
    def refuse(what: str):
        raise UserError(f"{where} {what}; {CHANGED}")

    if isinstance(template, dict):
        if not isinstance(saved, dict) or not set(saved) <= set(template):
            refuse(f"has keys that {sorted(map(str, template))} has not"[:200])
        for key in saved:
            check_like(saved[key], template[key], f"{where}.{key}")
    elif isinstance(template, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(template):
            refuse(f"is not a list of {len(template)}")
        for i, (item, like) in enumerate(zip(saved, template)):
            check_like(item, like, f"{where}[{i}]")
    elif isinstance(template, torch.Tensor):
        if not isinstance(saved, torch.Tensor) or saved.shape != template.shape or saved.dtype != template.dtype:
            refuse(f"is not a {template.dtype} tensor of shape {tuple(template.shape)}")
    elif isinstance(template, bool) or template is None:
        if type(saved) is not type(template):
            refuse(f"is {saved!r:.40}, not {'true or false' if isinstance(template, bool) else 'None'}")
    elif isinstance(template, (int, float)):
        if isinstance(saved, bool) or not isinstance(saved, (int, float)) or saved != saved or abs(saved) == float("inf"):
            refuse(f"is {saved!r:.40}, not a finite number")
    elif type(saved) is not type(template):
        refuse(f"is {saved!r:.40}, not a {type(template).__name__}")


def check_moments(state, params: list[torch.Tensor], where: str) -> None:
    """The optimizer's per-parameter state: for parameter ``i`` (in the order of the groups), a step count (a
    scalar) and tensors of the parameter's own shape (AdamW's moments)."""
    if not isinstance(state, dict):
        raise UserError(f"{where}: the optimizer state is not a dict of parameters; {CHANGED}")
    for index, values in state.items():
        if type(index) is not int or not 0 <= index < len(params) or not isinstance(values, dict):
            raise UserError(f"{where}: the optimizer state names parameter {index!r:.40}, of {len(params)}; {CHANGED}")
        shape = params[index].shape
        for name, value in values.items():
            fits = (isinstance(value, torch.Tensor) and value.is_floating_point()
                    and (value.shape == shape or (name == "step" and value.dim() == 0)))
            if not fits:
                found = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise UserError(f"{where}: the optimizer's {name} of parameter {index} is {found}, the parameter "
                                f"{tuple(shape)}; {CHANGED}")


def check_rng(rng, where: str) -> None:
    """The random number generators' states, as ``torch.get_rng_state()`` gives them (and CUDA's, where there is
    CUDA): torch copies them into the generator without checking their size."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    fits = (isinstance(rng, dict) and isinstance(rng.get("torch"), torch.Tensor) and rng["torch"].dtype == cpu.dtype
            and rng["torch"].shape == cpu.shape and isinstance(rng.get("cuda"), list)
            and all(isinstance(state, torch.Tensor) for state in rng["cuda"]))
    if fits and cuda is not None and rng["cuda"]:
        fits = len(rng["cuda"]) == len(cuda) and all(
            saved.dtype == state.dtype and saved.shape == state.shape for saved, state in zip(rng["cuda"], cuda))
    if not fits:
        raise UserError(f"{where}: rng is not the random number generator state train.py saves; {CHANGED}")
