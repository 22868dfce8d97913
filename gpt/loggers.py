"""Lightning loggers from the ``logger`` config group, the W&B run's life around training, and a CSV
logger that keeps its rows when a run is resumed."""

import csv
import importlib.util
import logging
import netrc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from gpt import UserError

log = logging.getLogger(__name__)
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


def make_loggers(group: DictConfig | None, wandb_id: str | None = None) -> list[Logger]:
    """One logger for each named entry of the ``logger`` group (``null`` entries are skipped).
    A W&B logger gets the run id ``wandb_id``, so that a resumed training continues its W&B run."""
    loggers = []
    for name, node in (group or {}).items():
        if node is None:
            continue
        target = node.get("_target_", "")
        is_wandb = target.endswith("WandbLogger")
        if is_wandb:
            use_wandb_offline_without_key()
        if target.endswith("TensorBoardLogger") and not any(
                importlib.util.find_spec(package) for package in ("tensorboard", "tensorboardX")):
            raise UserError(f"logger.{name} needs the tensorboard package: pip install tensorboard")
        extra = {"id": wandb_id, "resume": "allow"} if is_wandb and wandb_id else {}
        loggers.append(instantiate(node, **extra))
    return loggers


def start_loggers(loggers: list[Logger], config: dict) -> None:
    """Log the resolved config to every logger. A W&B run that cannot start online (no network, a bad
    key) falls back to offline once, with a warning, instead of stopping the training."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and os.environ.get("WANDB_MODE") != "offline":
            try:
                logger.experiment
            except Exception as e:  # wandb raises several kinds for network and authentication failures
                log.warning("W&B could not start online (%s: %s); logging offline instead", type(e).__name__, e)
                import wandb

                wandb.teardown()  # forget the failed run, so that its id can be used offline
                os.environ["WANDB_MODE"] = "offline"
                logger._experiment = None
        logger.log_hyperparams(config)


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


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        """Lightning deletes an existing metrics.csv here; a resumed run appends to it instead,
        starting from the columns already in it."""
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))


class CSVLogger(LightningCSVLogger):
    """Lightning's CSV logger, except that resuming in the same run directory keeps the earlier rows."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
