"""Shared behaviour of the entry points."""

import os
import sys
from contextlib import contextmanager

from hydra.errors import InstantiationException

from gpt import UserError


@contextmanager
def report_user_errors():
    """Turn a UserError (also one raised inside Hydra's instantiate) into one line on stderr and exit
    status 2; HYDRA_FULL_ERROR=1 shows the traceback instead."""
    try:
        yield
    except (UserError, InstantiationException) as e:
        cause = e if isinstance(e, UserError) else e.__cause__
        if not isinstance(cause, UserError) or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        fail(str(cause))


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
