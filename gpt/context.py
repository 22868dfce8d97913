"""Where this process runs: inside a Hydra multirun (``python train.py -m``) or not, first of its launch or not, and
the memory the machine has free."""

import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def is_rank_zero() -> bool:
    """Whether this is the first of the processes that a launcher started together (torchrun, Lightning and
    SLURM's launch tell each its rank; Lightning's own launcher, its local rank and node)."""
    return all(int(os.environ.get(key, 0)) == 0 for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"))


def sweep_dir() -> str | None:
    """The sweep directory of the multirun this job belongs to; None in a single run."""
    return HydraConfig.get().sweep.dir if in_multirun() else None


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo, in bytes (None where there is none)."""
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def format_bytes(n: int) -> str:
    """An amount of memory for people: 42 MB, 17.6 GB."""
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"
