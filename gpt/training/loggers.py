"""Lightning loggers from the ``logger`` config group: a CSV log with one row per step that survives resuming,
and Weights & Biases, offline without an API key, for the life of one training run."""

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
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from gpt import UserError
from gpt.compat import drop_wandb_anonymous_setting
from gpt.context import sweep_dir
from gpt.metrics import METRICS

log = logging.getLogger(__name__)


class CSVLogger(Logger):
    """``metrics.csv`` in ``save_dir``: a ``step`` column (optimizer steps done), then one column per metric, and
    one row per step with every metric logged at it. A run resumed from step ``resume_step`` keeps the rows up to
    that step and logs the later ones again, so that no step appears twice."""

    def __init__(self, save_dir: str, resume_step: int | None = None):
        super().__init__()
        self.path = Path(save_dir) / "metrics.csv"
        self.rows: list[dict] = []
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="") as f:
                self.rows = [row for row in csv.DictReader(f) if int(row["step"]) <= resume_step]
        self.columns = sorted({key for row in self.rows for key in row} - {"step"})
        self.written_columns, self.last_offset, self.last_index = None, 0, 0
        self.write()

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    @property
    def root_dir(self) -> str:
        return str(self.path.parent)

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        """Nothing: the resolved config is the run directory's ``config.yaml``."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.rows and int(self.rows[-1]["step"]) == step:  # more metrics of the same step: one row
            self.rows[-1].update(metrics)
        else:
            self.rows.append({"step": step, **metrics})
        self.columns = sorted({*self.columns, *metrics})

    @rank_zero_only
    def save(self) -> None:
        self.write()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.write()

    def write(self) -> None:
        """Bring the file up to date: rewrite it when a column has appeared, else write the last row again (it
        may have got more metrics of its step) and the rows after it."""
        if rank_zero_only.rank != 0:
            return
        rewrite = self.columns != self.written_columns
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w" if rewrite else "r+", newline="") as f:
            writer = csv.DictWriter(f, ["step", *self.columns])
            if rewrite:
                writer.writeheader()
                start, self.last_offset = 0, f.tell()
            else:
                f.seek(self.last_offset)
                f.truncate()
                start = self.last_index
            for i in range(start, len(self.rows)):
                self.last_offset, self.last_index = f.tell(), i
                writer.writerow(self.rows[i])
        self.written_columns = list(self.columns)


def wandb_api_key_configured() -> bool:
    """Whether W&B can log in without asking: WANDB_API_KEY, or a ~/.netrc entry that ``wandb login`` wrote."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).netloc
    try:
        return netrc.netrc(os.environ.get("NETRC") or Path.home() / ".netrc").authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_offline() -> bool:
    """Whether W&B runs offline: without an API key it would ask for one or fail. An explicit WANDB_MODE
    (online, offline, disabled) is obeyed."""
    return "WANDB_MODE" not in os.environ and not wandb_api_key_configured()


def make_loggers(group: DictConfig | None, wandb_id: str | None = None, resume_step: int | None = None) -> list[Logger]:
    """One logger for each named entry of the ``logger`` group (``null`` entries are skipped). The CSV log of a
    resumed run keeps its rows up to ``resume_step``; a W&B logger gets the run id ``wandb_id`` (a resumed run
    continues its W&B run), the sweep directory as its group in a multirun, and is started at once."""
    loggers = []
    for name, node in (group or {}).items():
        if node is None:
            continue
        target = node.get("_target_", "")
        if target.endswith("TensorBoardLogger") and not any(
                importlib.util.find_spec(package) for package in ("tensorboard", "tensorboardX")):
            raise UserError(f"logger.{name} needs the tensorboard package: pip install tensorboard")
        if target.endswith("WandbLogger"):
            loggers.append(start_wandb(node, wandb_id))
        elif target.endswith("CSVLogger"):
            loggers.append(instantiate(node, resume_step=resume_step))
        else:
            loggers.append(instantiate(node))
    return loggers


def start_wandb(node: DictConfig, run_id: str | None) -> WandbLogger:
    """A W&B logger with its run started, offline without an API key (``wandb sync`` uploads it later). A run
    that cannot start online (no network, a bad key) falls back to offline once, with a warning, instead of
    stopping the training."""
    options = {"id": run_id, "resume": "allow"} if run_id else {}
    if node.get("group") is None:
        options["group"] = sweep_dir()  # the jobs of a multirun form one group
    offline = wandb_offline()
    logger = instantiate(node, offline=offline, **options)
    try:
        start_run(logger)
    except Exception as e:  # wandb raises several kinds for network and authentication failures
        if offline or os.environ.get("WANDB_MODE") == "offline":
            raise
        log.warning("W&B could not start online (%s: %s); logging offline instead", type(e).__name__, e)
        import wandb

        wandb.teardown()  # forget the failed run, so that its id can be used offline
        logger = instantiate(node, offline=True, **options)
        start_run(logger)
    return logger


def start_run(logger: WandbLogger) -> None:
    drop_wandb_anonymous_setting(logger)
    run = logger.experiment  # starts the run (on rank 0)
    if rank_zero_only.rank == 0:
        for name, metric in METRICS.items():  # the runs table shows the best of each declared metric
            run.define_metric(name, step_metric="trainer/global_step", summary=metric.mode)


def log_config(loggers: list[Logger], config: dict) -> None:
    for logger in loggers:
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
