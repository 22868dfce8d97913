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
from gpt.result import read_result

SUMMARY_FILE = "summary.csv"
SUMMARY_COLUMNS = ["job", "val_loss", "exact_match", "best_step", "steps", "parameters", "wall_s", "status", "overrides",
                   "error", "output_dir"]


class SweepSummary(Callback):
    """Records every job of a multirun (overrides, best val/loss, steps, wall time, failed or not), keeps
    ``summary.csv`` in the sweep directory up to date after each job, and at the end prints the table sorted by
    loss and draws the comparison plots (``gpt.compare``) into the sweep directory.

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
            from gpt.compare import compare  # matplotlib takes a second to import: only when a sweep ends

            print("plots: " + ", ".join(str(path) for path in compare([self.sweep_dir])))


def job_row(config: DictConfig, job_return: JobReturn, wall_s: float) -> dict:
    output_dir = Path(config.hydra.runtime.output_dir)
    result = read_result(output_dir)
    return {
        "job": config.hydra.job.num,
        "val_loss": result.get("val_loss", ""),
        "exact_match": result.get("exact_match", ""),
        **{key: result.get(key, "") for key in ("best_step", "steps", "parameters")},
        "wall_s": round(wall_s, 1),
        "status": "completed" if job_return.status == JobStatus.COMPLETED else "failed",
        "overrides": config.hydra.job.override_dirname,
        "override_list": [o for o in job_return.overrides if o.split("=", 1)[0] not in excluded_keys(config)],
        "error": job_error(job_return),
        "output_dir": str(output_dir),
    }


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
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def rank(row: dict) -> tuple:
    """Best first: by exact match (higher first) for checkable answers, else by val/loss; failed jobs last."""
    if row["exact_match"] != "":
        return 0, -row["exact_match"]
    return (1, row["val_loss"]) if row["val_loss"] != "" else (2, math.inf)


def format_summary(rows: list[dict], path: Path) -> str:
    """The table, each job named by the overrides that differ between jobs; the shared ones are listed once."""
    shared = set.intersection(*(set(row["override_list"]) for row in rows))
    answers = any(row["exact_match"] != "" for row in rows)
    lines = [f"sweep of {len(rows)} jobs, best {'exact match' if answers else 'val/loss'} first (also in {path})"]
    if shared:
        lines.append(f"every job: {' '.join(o for o in rows[0]['override_list'] if o in shared)}")
    lines.append(f"{'job':>4} {'val/loss':>9}{' exact' if answers else ''} {'best at':>7} {'steps':>6} {'params':>8} "
                 f"{'wall':>8}  overrides")
    for row in rows:
        loss = f"{row['val_loss']:.4f}" if row["val_loss"] != "" else row["status"]
        exact = (f" {row['exact_match']:>5.3f}" if row["exact_match"] != "" else f" {'':>5}") if answers else ""
        own = " ".join(o for o in row["override_list"] if o not in shared) or "(none)"
        note = f"  ({row['error']})" if row["error"] else ""
        params = format_count(row["parameters"]) if row["parameters"] != "" else ""
        lines.append(f"{row['job']:>4} {loss:>9}{exact} {row['best_step']!s:>7} {row['steps']!s:>6} {params:>8} "
                     f"{row['wall_s']:>7.1f}s  {own}{note}")
    return "\n".join(lines)
