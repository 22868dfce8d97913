"""Evaluating and comparing runs: exact match on checkable answers (a callback of training), the tasks of
``eval.py`` over local files (``tasks``), the summary table of a sweep, and the comparison plots of run directories (``python -m gpt.eval.compare``). The metrics themselves are
declared once in ``gpt.metrics``.

May import: the core, ``gpt.models``, ``gpt.data`` and ``gpt.training``.
"""

from pathlib import Path

from omegaconf import OmegaConf

from gpt.metrics import Metric, declare

TASKS_DIR = Path(__file__).resolve().parents[2] / "conf" / "eval"  # a task of eval.py is a config here


def task_names() -> list[str]:
    """The tasks of ``conf/eval/`` by name (torch-free: the command line checks them before any library loads)."""
    return sorted(path.stem for path in TASKS_DIR.glob("*.yaml"))


# the metrics of each kind of task of gpt.eval.tasks (what else a task returns are counts), and which way is better
TASK_METRICS = {"Perplexity": {"bpb": "min", "loss": "min", "ppl": "min"},
                "MultipleChoice": {"acc": "max", "acc_norm": "max"},
                "Answers": {"exact_match": "max", "digit_acc": "max"}}


def declare_task_metrics(name: str, metrics: dict[str, str] | None = None) -> None:
    """Declare ``eval/<name>/<metric>`` for each metric of the task of ``conf/eval/<name>.yaml`` (``metrics``, or
    its kind's), so that checkpoints keep the best by it and sweeps rank and optimise it; torch-free, since an
    Optuna sweep's direction (``${metric_direction:...}``) is resolved before any library loads."""
    if metrics is None:
        kind = str(OmegaConf.load(TASKS_DIR / f"{name}.yaml").get("_target_", "")).rsplit(".", 1)[-1]
        metrics = TASK_METRICS.get(kind, {})
    for key, mode in metrics.items():
        declare(Metric(f"eval/{name}/{key}", f"{name}_{key}", mode, f"{name} {key}"))
