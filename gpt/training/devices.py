"""Where a run trains: the devices it asks for, checked against the machine before any process starts, with an
estimate of the memory each process needs; its precision; whether torch.compile works; FSDP's sharding policy.
Lightning is not loaded here, so that train.py can check the devices before anything else."""

import logging
import os
from dataclasses import dataclass

import torch
from omegaconf import ListConfig, OmegaConf

from gpt import UserError
from gpt.context import available_memory, format_bytes
from gpt.data.bpe import GPT2_VOCAB_SIZE
from gpt.models.interface import TokenModel, WrapUnit

log = logging.getLogger(__name__)

GPU_ACCELERATORS = ("gpu", "cuda")


@dataclass
class Placement:
    """The accelerator (``cuda``, ``cpu``, ``mps``), the processes per node and the nodes of a run."""

    accelerator: str
    devices: int
    num_nodes: int = 1

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    def describe(self) -> str:
        nodes = f" on each of {self.num_nodes} nodes" if self.num_nodes > 1 else ""
        if self.accelerator == "cuda":
            name = torch.cuda.get_device_name(0)
            return f"{self.devices} CUDA GPU{'s' if self.devices > 1 else ''} ({name}){nodes}"
        if self.accelerator == "cpu":
            return f"{self.devices} CPU processes{nodes}" if self.world_size > 1 else "the CPU"
        return f"{self.devices} {self.accelerator} device(s){nodes}"


def placement(accelerator: str, devices, num_nodes: int) -> Placement:
    """What ``trainer.accelerator``/``devices``/``num_nodes`` mean on this machine (as Lightning reads them), or a
    UserError when the machine does not have it. Under torchrun or SLURM the processes are already started."""
    gpus = torch.cuda.device_count()
    if accelerator in GPU_ACCELERATORS and not gpus:
        raise UserError(f"trainer.accelerator={accelerator} but no GPU was found (torch.cuda.device_count() is 0); "
                        "use trainer.accelerator=cpu, or auto")
    if accelerator == "auto":
        accelerator = "cuda" if gpus else "mps" if torch.backends.mps.is_available() else "cpu"
    accelerator = "cuda" if accelerator in GPU_ACCELERATORS else accelerator
    if accelerator == "cpu" and devices in (-1, "-1"):
        raise UserError("trainer.devices=-1 means every GPU, and no GPU was found; for CPU processes give their "
                        "number: trainer.accelerator=cpu trainer.devices=N")
    external = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("SLURM_NTASKS_PER_NODE")
    count = int(external) if external else device_count(devices, gpus if accelerator == "cuda" else 1)
    if accelerator == "cuda" and not external and count > gpus:
        raise UserError(f"trainer.devices={devices} asks for {count} GPUs but {gpus} {'was' if gpus == 1 else 'were'} "
                        f"found ({torch.cuda.get_device_name(0)}); use trainer.devices={gpus} or fewer")
    return Placement(accelerator, count, num_nodes)


def device_count(devices, available: int) -> int:
    """Lightning's reading of ``trainer.devices``: a number, a list of indices, "0,1", -1 or "auto" (all)."""
    if devices in ("auto", -1, "-1"):
        return available
    if isinstance(devices, str):
        return len([d for d in devices.split(",") if d.strip()]) if "," in devices else int(devices)
    return devices if isinstance(devices, int) else len(devices)


def refuse_cpu_processes_by_accident(requested: str, devices, place: Placement, per_process: int) -> None:
    """Several devices with ``trainer.accelerator=auto`` on a machine without GPUs would start CPU processes: stop
    and say what they would need, unless CPU processes were asked for (``trainer.accelerator=cpu``)."""
    if requested == "auto" and place.accelerator == "cpu" and place.devices > 1:
        raise UserError(f"trainer.devices={devices} but no GPU was found: {place.devices} CPU processes of this model "
                        f"would need about {format_bytes(place.devices * per_process)} of memory "
                        f"({format_bytes(per_process)} each); to train with CPU processes on purpose: "
                        f"trainer.accelerator=cpu trainer.devices={place.devices}")


def refuse_missing_devices(cfg) -> None:
    """Before anything is prepared or built: the GPUs asked for are there, and several devices on a machine without
    GPUs are refused (``refuse_cpu_processes_by_accident``) with an estimate of what the CPU processes would need: the
    model built on the meta device, with the vocabulary its tokenizer will have (an estimate for characters)."""
    trainer = cfg.trainer
    devices = OmegaConf.to_object(trainer.devices) if isinstance(trainer.devices, ListConfig) else trainer.devices
    place = placement(trainer.accelerator, devices, trainer.num_nodes)
    if trainer.accelerator == "auto" and place.accelerator == "cpu" and place.devices > 1:
        from hydra.utils import instantiate

        vocab = {"gpt2": GPT2_VOCAB_SIZE, "bpe": cfg.data.get("vocab_size") or 256}.get(cfg.data.tokenizer, 256)
        with torch.device("meta"):
            model = instantiate(cfg.model, vocab_size=vocab).build()
        per_process = memory_per_process(model, cfg.data.batch_size, cfg.model.block_size, "32-true")
        refuse_cpu_processes_by_accident(trainer.accelerator, devices, place, per_process)


def check_memory(place: Placement, per_process: int) -> None:
    """On the CPU, the processes of this machine must fit in its free memory."""
    available = available_memory()
    if place.accelerator == "cpu" and available is not None and place.devices * per_process > available:
        raise UserError(f"{place.devices} CPU process(es) of this model need about "
                        f"{format_bytes(place.devices * per_process)} of memory ({format_bytes(per_process)} each) but "
                        f"{format_bytes(available)} is free; use fewer trainer.devices, a smaller data.batch_size or a "
                        "smaller model")


def memory_per_process(model: TokenModel, batch_size: int, length: int, precision: str) -> int:
    """An estimate, in bytes, of what one process needs to train ``model`` on batches of ``batch_size`` x
    ``length`` tokens: 16 bytes per parameter (fp32 weights and gradients, AdamW's two moments) and the
    activations kept for the backward pass (``activations_per_token`` values of 4 bytes, 2 in 16-bit precision)."""
    weights = 16 * sum(p.numel() for p in model.parameters())
    value_bytes = 2 if precision.startswith(("16", "bf16")) else 4
    return int(weights + batch_size * length * model.activations_per_token() * value_bytes)


def auto_precision(precision: str) -> str:
    """``auto``: bf16 mixed precision on GPUs that support it, full precision elsewhere."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"


def can_compile(device: torch.device) -> str | None:
    """None when ``torch.compile`` works on ``device``, else why not: a tiny function is compiled as a probe."""
    try:
        torch.compile(lambda x: x * 2)(torch.ones(2, device=device))
    except Exception as e:  # a missing compiler or Triton shows up as one of several kinds
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return None


def fsdp_strategy(activation_checkpointing: bool = False, **kwargs):
    """FSDP that shards the model block by block: each ``gpt.models.interface.WrapUnit`` of the model is wrapped."""
    from lightning.pytorch.strategies import FSDPStrategy  # the devices are checked before Lightning loads

    units = {WrapUnit}
    return FSDPStrategy(auto_wrap_policy=units, activation_checkpointing_policy=units if activation_checkpointing
                        else None, **kwargs)
