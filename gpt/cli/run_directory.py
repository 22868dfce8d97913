"""The Hydra callback that holds a run (or sweep) directory before Hydra writes into it."""

import os
from contextlib import contextmanager
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from gpt import UserError
from gpt.cli.errors import MADE_RUN_DIRS, fail, remove_if_unstarted
from gpt.files import first_missing
from gpt.context import is_rank_zero
from gpt.metrics import metric_named
from gpt.training.rundir import SWEEP_LOCK_FILE, check_run_dir, hold_until_exit


class RunDirectory(Callback):
    """Hydra callback: check the run (or sweep) directory before Hydra writes into it, and hold it from then on: a
    location that cannot be written, a directory that another live run holds, or one that holds an earlier run that
    this command would overwrite, is one line, and nothing is written. It fails closed: whatever goes wrong while
    checking stops the command (Hydra would turn an error of a callback into a warning and go on)."""

    def on_run_start(self, config, **kwargs) -> None:
        directory = Path(config.hydra.run.dir)
        if made := first_missing(directory.resolve()):
            MADE_RUN_DIRS[directory.resolve()] = made
        with failing_closed(directory):
            check_writable(directory, "hydra.run.dir")
            if is_rank_zero() and not config.trainer.get("fast_dev_run"):
                hold_until_exit(directory)
                check_run_dir(directory, resuming=bool(config.get("ckpt_path")),
                              overwrite=bool(config.get("overwrite")))
                if config.get("ckpt_path"):
                    check_resume(config.ckpt_path, config.hydra.run.dir, config.model,
                                 (config.get("callbacks") or {}).get("checkpoints"))

    def on_multirun_start(self, config, **kwargs) -> None:
        directory = Path(config.hydra.sweep.dir)
        with failing_closed(directory):
            check_writable(directory, "hydra.sweep.dir")
            if not is_rank_zero():
                return
            hold_until_exit(directory, SWEEP_LOCK_FILE, "sweep", "hydra.sweep.dir")
            jobs = sorted(str(p) for p in directory.glob("*/metrics.csv"))
            if jobs and not config.get("overwrite") and not config.get("ckpt_path"):
                raise UserError(f"{directory} already holds the runs of a sweep ({len(jobs)}); choose another "
                                "hydra.sweep.dir=..., or start over with overwrite=true")


@contextmanager
def failing_closed(directory: Path):
    """Any error of the block is one line and exit status 2, and a run directory that the command created is
    removed again."""
    try:
        yield
    except Exception as e:
        remove_if_unstarted(str(directory))
        fail(str(e) if isinstance(e, UserError) else f"checking {directory} failed ({type(e).__name__}: {e})")


def check_resume(ckpt_path: str, run_dir: str, model: DictConfig, checkpoints: DictConfig | None) -> None:
    """A resumed run's checkpoint is there, holds the configured model and kept its best by the same monitor: a
    failed resume leaves the run's files as they were. (A quick look at the checkpoint's record; train() then reads
    and checks the whole file.)"""
    from hydra.utils import instantiate

    from gpt.training.checkpoint import check_same_model, resume_checkpoint

    path, _, record = resume_checkpoint(ckpt_path, run_dir, verify=False)
    check_same_model(record, instantiate(model, vocab_size=1), f"ckpt_path={path}")
    kept = (record.config.get("callbacks") or {}).get("checkpoints") or {}
    if checkpoints and kept and kept_by(kept) != kept_by(checkpoints):  # a loss would be compared with an accuracy
        raise UserError(f"ckpt_path={path} kept its best checkpoint by callbacks.checkpoints.monitor="
                        f"{kept.get('monitor', 'val/loss')}, not {checkpoints.get('monitor', 'val/loss')}; resume "
                        "with the options it was trained with (its experiment=, if any)")


def kept_by(checkpoints) -> tuple[str, str | None]:
    """(monitor, direction) of a checkpoints node: its mode, or the monitor's declared one."""
    monitor = checkpoints.get("monitor", "val/loss")
    metric = metric_named(monitor)
    return monitor, checkpoints.get("mode") or (metric.mode if metric else None)


def check_writable(directory: Path, override: str) -> None:
    """Create ``directory`` and write a file in it, or stop with one line naming the problem."""
    probe = directory / f".write-test.{os.getpid()}"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to the output directory {directory} ({e.strerror or e}); choose another with "
                        f"{override}=...") from None
