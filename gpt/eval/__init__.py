"""Evaluating and comparing runs: exact match on checkable answers (a callback of training), the tasks of
``eval.py`` over local files (``tasks``), the summary table of a sweep, and the comparison plots of run directories (``python -m gpt.eval.compare``). The metrics themselves are
declared once in ``gpt.metrics``.

May import: the core, ``gpt.models``, ``gpt.data`` and ``gpt.training``.
"""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parents[2] / "conf" / "eval"  # a task of eval.py is a config here


def task_names() -> list[str]:
    """The tasks of ``conf/eval/`` by name (torch-free: the command line checks them before any library loads)."""
    return sorted(path.stem for path in TASKS_DIR.glob("*.yaml"))
