"""Where this process runs: inside a Hydra multirun (``python train.py -m``) or not."""

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_dir() -> str | None:
    """The sweep directory of the multirun this job belongs to; None in a single run."""
    return HydraConfig.get().sweep.dir if in_multirun() else None
