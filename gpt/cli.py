"""Shared behaviour of the entry points."""

import os
import sys
from contextlib import contextmanager

from gpt import UserError


@contextmanager
def report_user_errors():
    """Turn a UserError into one line on stderr and exit status 2 (the traceback with HYDRA_FULL_ERROR=1)."""
    try:
        yield
    except UserError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
