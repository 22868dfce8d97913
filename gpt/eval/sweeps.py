"""Hydra multiruns (``python train.py -m ...``): the summary table of a sweep."""

import csv
import math
import time
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from gpt import format_count
from gpt.context import is_rank_zero
from gpt.metrics import METRICS, Metric, metric_named, read_result

SUMMARY_FILE = "summary.csv"
RUN_COLUMNS = ["best_step", "steps", "parameters", "wall_s", "status", "overrides", "error", "output_dir"]


class SweepSummary(Callback):
    """Records every job of a multirun (overrides, the metrics of its best checkpoint, steps, wall time, failed or
    not), keeps ``summary.csv`` in the sweep directory up to date after each job, and at the end prints the table,
    best first by the jobs' checkpoint monitor and its declared direction (``gpt.metrics``), and draws the comparison
    plots (``gpt.eval.compare``) into the sweep directory.

    It sees the jobs that run in its own process, as the basic launcher runs them (grids and Optuna searches)."""

    def __init__(self):
        self.rows: list[dict] = []
        self.sweep_dir: Path | None = None
        self.job_started = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.rows, self.sweep_dir = [], Path(config.hydra.sweep.dir)

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        self.job_started = time.perf_counter()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs) -> None:
        if self.sweep_dir is None or not is_rank_zero():  # a single run; under torchrun, rank 0 keeps the record
            return
        self.rows.append(job_row(config, job_return, time.perf_counter() - self.job_started))
        self.rows.sort(key=rank)
        write_summary(self.rows, self.sweep_dir / SUMMARY_FILE)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.rows and is_rank_zero():
            print(format_summary(self.rows, self.sweep_dir / SUMMARY_FILE))
            from gpt.eval.compare import compare  # matplotlib takes a second to import: only when a sweep ends

            print("plots: " + ", ".join(str(path) for path in compare([self.sweep_dir])))


def job_row(config: DictConfig, job_return: JobReturn, wall_s: float) -> dict:
    output_dir = Path(config.hydra.runtime.output_dir)
    result = read_result(output_dir)
    return {
        "job": config.hydra.job.num,
        **{key: value for key, value in result.items() if isinstance(value, (int, float))},
        "monitor": result.get("monitor"), "declared": result.get("metrics", {}),
        **{key: result.get(key, "") for key in ("best_step", "steps", "parameters")},
        "wall_s": round(wall_s, 1),
        "status": "completed" if job_return.status == JobStatus.COMPLETED else "failed",
        "overrides": config.hydra.job.override_dirname,
        "override_list": [o for o in job_return.overrides if o.split("=", 1)[0] not in excluded_keys(config)],
        "error": job_error(job_return),
        "output_dir": str(output_dir),
    }


def metrics_of(rows: list[dict]) -> list[Metric]:
    """The declared metrics that the jobs' results hold, the monitor's first."""
    found = {}
    for row in rows:
        for name in [row["monitor"], *row["declared"], *METRICS]:
            metric = metric_named(name, row["declared"]) if name else None
            if metric and metric.key in row and name not in found:
                found[name] = metric
    monitor = next((metric_named(row["monitor"], row["declared"]) for row in rows if row["monitor"]), None)
    return sorted(found.values(), key=lambda metric: metric != monitor)


def job_error(job_return: JobReturn) -> str:
    """The first line of a failed job's error ('' for a job that completed): its return value raises it."""
    try:
        job_return.return_value
    except Exception as e:
        return first_line(e)
    return ""


def excluded_keys(config: DictConfig) -> set[str]:
    return set(config.hydra.job.config.override_dirname.exclude_keys)


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def write_summary(rows: list[dict], path: Path) -> None:
    columns = ["job", *(metric.key for metric in metrics_of(rows)), *RUN_COLUMNS]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def rank(row: dict) -> tuple:
    """Best first by the job's checkpoint monitor, in its declared direction; jobs without a result last."""
    metric = metric_named(row["monitor"], row["declared"]) if row["monitor"] else None
    if metric is None or metric.key not in row:
        return 1, math.inf
    return 0, row[metric.key] if metric.mode == "min" else -row[metric.key]


def format_summary(rows: list[dict], path: Path) -> str:
    """The table, each job named by the overrides that differ between jobs; the shared ones are listed once."""
    shared = set.intersection(*(set(row["override_list"]) for row in rows))
    metrics = metrics_of(rows)
    first = metrics[0].label if metrics else "val/loss"
    lines = [f"sweep of {len(rows)} jobs, best {first} first (also in {path})"]
    if shared:
        lines.append(f"every job: {' '.join(o for o in rows[0]['override_list'] if o in shared)}")
    widths = [max(9, len(metric.label)) for metric in metrics]
    lines.append(f"{'job':>4} {' '.join(f'{m.label:>{w}}' for m, w in zip(metrics, widths))} {'best at':>7} "
                 f"{'steps':>6} {'params':>8} {'wall':>8}  overrides")
    for row in rows:
        values = [(metric.format(row[metric.key]) if metric.key in row else row["status"] if i == 0 else "")
                  for i, metric in enumerate(metrics)]
        own = " ".join(o for o in row["override_list"] if o not in shared) or "(none)"
        note = f"  ({row['error']})" if row["error"] else ""
        params = format_count(row["parameters"]) if row["parameters"] != "" else ""
        lines.append(f"{row['job']:>4} {' '.join(f'{v:>{w}}' for v, w in zip(values, widths))} "
                     f"{row['best_step']!s:>7} {row['steps']!s:>6} {params:>8} {row['wall_s']:>7.1f}s  {own}{note}")
    return "\n".join(lines)
