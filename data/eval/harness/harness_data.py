"""The data of the lm-evaluation-harness tasks in this directory (``custom_dataset: !function harness_data.<name>``),
read from the files beside it, so that the tasks run from any working directory and never download anything."""

import json
from pathlib import Path

import datasets

EVAL_DATA = Path(__file__).resolve().parents[1]  # data/eval/
HELLASWAG = EVAL_DATA / "hellaswag" / "hellaswag_val.jsonl"


def jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; the task's docs say where it comes from")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def comus(**_) -> dict[str, datasets.Dataset]:
    """The whole of comus.txt, one document (lm-eval scores it in disjoint windows of the model's context)."""
    return {"test": datasets.Dataset.from_list([{"text": (EVAL_DATA / "comus.txt").read_text(encoding="utf-8")}])}


def comus_cloze(**_) -> dict[str, datasets.Dataset]:
    return {"test": datasets.Dataset.from_list(jsonl(EVAL_DATA / "comus_cloze.jsonl"))}


def addition(**_) -> dict[str, datasets.Dataset]:
    return {"test": datasets.Dataset.from_list(jsonl(EVAL_DATA / "addition.jsonl"))}


def hellaswag(**_) -> dict[str, datasets.Dataset]:
    """HellaSwag's validation split as its authors publish it (``hellaswag_val.jsonl``: ``ctx_a``, ``ctx_b``,
    ``activity_label``, ``endings``, ``label``), put in data/eval/hellaswag/ by hand."""
    return {"validation": datasets.Dataset.from_list(jsonl(HELLASWAG))}


def process_hellaswag(dataset: datasets.Dataset) -> datasets.Dataset:
    """lm-eval's own preprocessing of HellaSwag, so that the scores are its task's."""
    from lm_eval.tasks.hellaswag.utils import process_docs

    return process_docs(dataset)
