"""The result of a training run, ``result.json`` in its run directory: written once when fitting ends, read by
train.py (the value it returns) and by the summary of a sweep."""

import json
from pathlib import Path

from gpt.files import atomic_write_text

RESULT_FILE = "result.json"
# the validation metrics a run may log: each one's key in result.json, and which way is better
METRICS = {"val/loss": ("val_loss", "min"), "val/exact_match": ("exact_match", "max"),
           "val/digit_acc": ("digit_acc", "max"), "val/mlm_acc": ("mlm_acc", "max")}


def write_result(output_dir: str | Path, result: dict) -> None:
    atomic_write_text(Path(output_dir) / RESULT_FILE, json.dumps(result, indent=1) + "\n")


def read_result(output_dir: str | Path) -> dict:
    """What the run in ``output_dir`` wrote; empty if it did not finish."""
    path = Path(output_dir) / RESULT_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def remove_result(output_dir: str | Path) -> None:
    (Path(output_dir) / RESULT_FILE).unlink(missing_ok=True)
