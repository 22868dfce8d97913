"""Real runs of train.py and sample.py on padded paragraphs: a masked LM and a document-level causal LM."""

import ast
import csv
import re
from pathlib import Path

import pytest

from conftest import run_script
from serving import serving

TINY_MODEL = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=64"]
SHORT_PADDED_RUN = ["data.batch_size=16", "trainer.max_steps=40", "trainer.val_every_n_steps=20",
                    "+trainer.limit_val_batches=10",
                    "scheduler.warmup_steps=5", "trainer.enable_progress_bar=false"]


def train_padded(run_dir: Path, *overrides: str):
    return run_script("train.py", *TINY_MODEL, *SHORT_PADDED_RUN, f"hydra.run.dir={run_dir}",
                      f"paths.data_dir={run_dir.parent / 'data'}", *overrides)


def metric(run_dir: Path, name: str) -> list[float]:
    with open(run_dir / "metrics.csv") as f:
        return [float(row[name]) for row in csv.DictReader(f) if row.get(name)]


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("mlm") / "run"
    result = train_padded(run_dir, "experiment=mlm_char")
    assert result.returncode == 0, result.stderr
    return run_dir


def test_masked_lm_logs_loss_accuracy_and_padding(mlm_run):
    val_loss = metric(mlm_run, "val/loss")
    assert len(val_loss) == 2 and val_loss[-1] < 4.0  # uniform over 68 tokens is 4.22
    accuracy = metric(mlm_run, "val/mlm_acc")
    assert len(accuracy) == 2 and 0 < accuracy[-1] < 1
    assert all(0 <= f < 1 for f in metric(mlm_run, "train/pad_frac"))
    log = (mlm_run / "train.log").read_text()
    assert "paragraphs (0 empty skipped)" in log


def test_training_shows_a_validation_example_with_its_masks_filled(mlm_run):
    (line,) = [line for line in (mlm_run / "train.log").read_text().splitlines() if "masks filled at step 40" in line]
    masked, filled, text = re.search(r": '(.*)' -> '(.*)' \(the text: '(.*)'\)$", line).groups()
    assert "[MASK]" in masked and "[MASK]" not in filled
    assert len(filled) == len(text) == len(masked) - masked.count("[MASK]") * (len("[MASK]") - 1)
    # every position that validation predicts is shown masked; everything else is the text itself (as the log's
    # repr shows it: a masked newline is two characters there)
    assert re.fullmatch(r"(?:\\.|.)".join(map(re.escape, masked.split("[MASK]"))), text, re.DOTALL)


def test_sample_and_the_server_fill_masks(mlm_run):
    prompt = "To be, or not to [MASK][MASK]: that is the question."
    result = run_script("sample.py", f"ckpt_path={mlm_run / 'checkpoints' / 'best.ckpt'}", f'prompt="{prompt}"',
                        "candidates=3")
    assert result.returncode == 0, result.stderr
    filled, first, second = result.stdout.splitlines()[1:4]
    assert filled.startswith("To be, or not to ") and filled.endswith(": that is the question.")
    assert len(filled) == len(prompt) - 2 * len("[MASK]") + 2
    assert first.startswith("[MASK] 1: ") and second.startswith("[MASK] 2: ")
    candidates = [(ast.literal_eval(token), float(p)) for token, p in re.findall(r"('.*?'|\".*?\") (\d\.\d+)", first)]
    assert len(candidates) == 3 and filled[len("To be, or not to ")] == candidates[0][0]  # the top candidate
    assert [p for _, p in candidates] == sorted((p for _, p in candidates), reverse=True)
    with serving(mlm_run / "checkpoints" / "best.ckpt") as server:
        assert server.get("/v1/models").json()["data"][0]["kind"] == "masked"
        served = server.post("/v1/fill_mask", {"prompt": prompt, "top_k": 3}).json()
        assert served["text"] == filled and len(served["masks"]) == 2
        assert [option["token"] for option in served["masks"][0]] == [token for token, _ in candidates]
        refused = server.post("/v1/completions", {"prompt": "ROMEO:"})
        assert refused.status_code == 400 and refused.json()["error"]["message"].endswith(
            "is a masked LM: it fills in the [MASK] tokens of a text; use /v1/fill_mask")
        no_mask = server.post("/v1/fill_mask", {"prompt": "ROMEO:"})
        assert no_mask.status_code == 400 and "the prompt has no [MASK]" in no_mask.json()["error"]["message"]


def test_sample_needs_a_mask_in_the_prompt(mlm_run):
    result = run_script("sample.py", f"ckpt_path={mlm_run / 'checkpoints' / 'best.ckpt'}", "prompt=ROMEO:")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: the model is a masked LM and the prompt has no [MASK]")


@pytest.mark.slow  # causal examples also resume, bitwise, in test_resume's every-format test
def test_document_level_causal_lm_on_paragraphs(tmp_path):
    result = train_padded(tmp_path / "run", "data=shakespeare_paragraphs", "trainer.val_every_n_steps=40")
    assert result.returncode == 0, result.stderr
    assert metric(tmp_path / "run", "val/loss")[-1] < 3.8 and metric(tmp_path / "run", "train/pad_frac")
    sample = run_script("sample.py", f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'best.ckpt'}", "prompt=ROMEO:",
                        "max_new_tokens=20")
    assert sample.returncode == 0 and "ROMEO:" in sample.stdout, sample.stderr


def test_bad_mask_probability_is_one_line(tmp_path):
    result = train_padded(tmp_path / "run", "experiment=mlm_char", "data.mlm_probability=1.5")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == \
        "error: data.mlm_probability must be between 0 and 1 (exclusive), got 1.5; BERT uses 0.15"
