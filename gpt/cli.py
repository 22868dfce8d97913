"""Shared behaviour of the entry points."""

import os
import sys
from contextlib import contextmanager
from pathlib import Path

from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback

from gpt import TrainingDiverged, UserError
from gpt.sweeps import in_multirun


@contextmanager
def report_user_errors():
    """Turn a UserError (also one raised inside Hydra's instantiate), or a diverged single run, into one
    line on stderr and exit status 2; HYDRA_FULL_ERROR=1 shows the traceback instead."""
    try:
        yield
    except TrainingDiverged as e:
        if in_multirun() or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise  # Hydra records the failed job and the sweep goes on
        fail(str(e))
    except (UserError, InstantiationException) as e:
        cause = e if isinstance(e, UserError) else e.__cause__
        if not isinstance(cause, UserError) or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        fail(str(cause))


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_writable(directory: str, override: str) -> None:
    """Create ``directory`` and write a file in it, or stop with one line naming the problem."""
    probe = Path(directory) / ".write-test"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        fail(f"cannot write to the output directory {directory} ({e.strerror or e}); choose another with {override}=...")


class CheckOutputDir(Callback):
    """Hydra callback: check the run (or sweep) directory before Hydra writes into it, so that an
    unwritable or missing location gives one line instead of a traceback."""

    def on_run_start(self, config, **kwargs) -> None:
        check_writable(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        check_writable(config.hydra.sweep.dir, "hydra.sweep.dir")
