"""Lightning loggers from the ``logger`` config group, and the W&B run's life around training."""

import importlib.util
import netrc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from gpt import UserError
from gpt.sweeps import in_multirun

# `${multirun_only:X}` is X in a job of a multirun and null in a single run: conf/logger/wandb.yaml groups the
# W&B runs of a sweep by it.
OmegaConf.register_new_resolver("multirun_only", lambda value: value if in_multirun() else None, replace=True)


def wandb_api_key_configured() -> bool:
    """Whether W&B can log in without asking: WANDB_API_KEY, or a ~/.netrc entry that ``wandb login`` wrote."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).netloc
    try:
        return netrc.netrc(os.environ.get("NETRC") or Path.home() / ".netrc").authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def use_wandb_offline_without_key() -> None:
    """Without an API key W&B would prompt or fail; run offline instead (``wandb sync`` uploads the run later).

    An explicit WANDB_MODE (online, offline, disabled) is left as it is."""
    if "WANDB_MODE" not in os.environ and not wandb_api_key_configured():
        os.environ["WANDB_MODE"] = "offline"


def make_loggers(group: DictConfig | None) -> list[Logger]:
    """One logger for each named entry of the ``logger`` group (``null`` entries are skipped)."""
    loggers = []
    for name, node in (group or {}).items():
        if node is None:
            continue
        target = node.get("_target_", "")
        if target.endswith("WandbLogger"):
            use_wandb_offline_without_key()
        if target.endswith("TensorBoardLogger") and not any(
                importlib.util.find_spec(package) for package in ("tensorboard", "tensorboardX")):
            raise UserError(f"logger.{name} needs the tensorboard package: pip install tensorboard")
        loggers.append(instantiate(node))
    return loggers


@contextmanager
def wandb_run_finished(loggers: list[Logger]) -> Iterator[None]:
    """Finish the W&B run when the block ends, so each job of a multirun is a run of its own.

    A block that raises marks the run as failed. An offline run ends with the command that uploads it."""
    if not any(isinstance(logger, WandbLogger) for logger in loggers):
        yield
        return
    try:
        yield
    except BaseException:
        finish_wandb_run(exit_code=1)
        raise
    finish_wandb_run(exit_code=0)


@rank_zero_only
def finish_wandb_run(exit_code: int) -> None:
    import wandb

    run = wandb.run
    if run is None:
        return
    offline, run_dir = run.offline, run.settings.sync_dir
    wandb.finish(exit_code=exit_code)
    if offline:
        print(f"W&B run saved offline in {run_dir}; upload it with: wandb sync {run_dir}")
