"""What the entry points (train.py, sample.py, prepare.py, export.py) share: one-line errors, required values
and a writable run directory."""

import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from gpt import TrainingDiverged, UserError
from gpt.context import in_multirun


@contextmanager
def report_user_errors(renamed_keys: dict[str, str] | None = None):
    """Turn a UserError (also one raised inside Hydra's instantiate), or a diverged single run, into one
    line on stderr and exit status 2; HYDRA_FULL_ERROR=1 shows the traceback instead.

    ``renamed_keys``: config keys as errors name them -> as this entry point takes them (prepare.py takes
    ``tokenizer=`` where train.py takes ``data.tokenizer=``)."""
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
        fail(rename_keys(str(cause), renamed_keys or {}))


def rename_keys(message: str, renamed_keys: dict[str, str]) -> str:
    if not renamed_keys:
        return message
    pattern = r"\b(" + "|".join(map(re.escape, renamed_keys)) + r")\b"
    return re.sub(pattern, lambda match: renamed_keys[match.group(1)], message)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_required(cfg: DictConfig, command: str) -> None:
    """Stop with one line naming every value the config leaves to the command line (``???``) that is missing."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        example = " ".join(f"{key}=..." for key in missing)
        raise UserError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required; "
                        f"give {'it' if len(missing) == 1 else 'them'} on the command line: {command} {example}")


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
