"""Every mistake as one line on stderr and exit status 2, and how a stopped command ends: its signal, the step it
stopped at, and the command that resumes it."""

import os
import shlex
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

from hydra.errors import InstantiationException

from gpt import RunStopped, TrainingDiverged, UserError
from gpt.context import in_multirun, is_rank_zero
from gpt.training.rundir import remove_unstarted_run

# the run directory that this command's single run makes, with the outermost directory made for it (outputs/<date>/
# for Hydra's default; gpt.cli.run_directory.RunDirectory notes it): a command that writes nothing removes them
MADE_RUN_DIRS: dict[Path, Path] = {}


@contextmanager
def report_user_errors(run_dir: str | None = None):
    """Turn a UserError (also one raised inside Hydra's instantiate), a library's refusal of a value given to it
    through instantiate, or a diverged single run into one line on stderr and exit status 2; a stopped run into its
    message and 128 + the signal's number. HYDRA_FULL_ERROR=1 shows the traceback instead."""
    try:
        yield
    except RunStopped as stop:
        if stop.step is None:
            remove_if_unstarted(run_dir)
        print(stopped_message(stop, run_dir), file=sys.stderr)
        sys.exit(128 + getattr(signal, stop.signal, signal.SIGTERM))  # another rank's signal: as SIGTERM
    except TrainingDiverged as e:
        if in_multirun() or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise  # Hydra records the failed job and the sweep goes on
        fail(str(e))
    except (UserError, InstantiationException) as e:
        cause = e if isinstance(e, UserError) else e.__cause__
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or cause is None:
            raise
        remove_if_unstarted(run_dir)
        fail(str(cause) if isinstance(cause, UserError) else refused_value(e))


def remove_if_unstarted(run_dir: str | None) -> None:
    """A single run refused or stopped before it trained leaves no directory behind that this command made and that
    holds only what it wrote as it started."""
    made = MADE_RUN_DIRS.get(Path(run_dir).resolve()) if run_dir else None
    if made and is_rank_zero():
        remove_unstarted_run(run_dir, up_to=made)


def refused_value(error: InstantiationException) -> str:
    """A library's error for a value it was given (Lightning's Trainer: ``trainer.precision=bogus``), in one line."""
    target = str(error).split("'")[1] if "'" in str(error) else "a config node"
    reason = str(error.__cause__).strip().splitlines()[0] if str(error.__cause__).strip() else ""
    return f"{target} refused its arguments: {type(error.__cause__).__name__}: {reason}"


def stopped_message(stop: RunStopped, run_dir: str | None) -> str:
    if stop.step is None:
        return f"stopped by {stop.signal}; nothing half-written was kept"
    resume = f"resume with: {resume_command(run_dir)}" if run_dir else "resume with ckpt_path=last"
    if not stop.saved:
        return f"stopped at step {stop.step} by {stop.signal}, without saving it; {resume} (from its last checkpoint)"
    return f"stopped at step {stop.step} by {stop.signal}; {resume}"


def resume_command(run_dir: str) -> str:
    """The command that resumes the run in ``run_dir``: this command's overrides, with the run directory and
    ``ckpt_path=last`` (a path under the working directory relative to it, as users type it)."""
    from hydra.core.hydra_config import HydraConfig

    given = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else sys.argv[1:]
    kept = [o for o in given if o.split("=", 1)[0].lstrip("+~") not in ("ckpt_path", "overwrite", "hydra.run.dir")]
    directory = Path(run_dir).resolve()
    if directory.is_relative_to(Path.cwd()):
        directory = directory.relative_to(Path.cwd())
    return shlex.join(["python", "train.py", *kept, f"hydra.run.dir={directory}", "ckpt_path=last"])


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


