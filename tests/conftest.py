import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO / "data" / "tinyshakespeare.txt"

# A model small enough to train for a few dozen steps in seconds on a CPU.
TINY_GPT = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32"]
SHORT_RUN = ["data.batch_size=16", "data.val_windows=64", "trainer.max_steps=60", "trainer.val_check_interval=30",
        "scheduler.warmup_steps=5", "trainer.enable_progress_bar=false"]


def run_script(script: str, *overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run one of the project's entry points the way a user does, from the repository root."""
    return subprocess.run([sys.executable, script, *overrides], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def train_tiny(run_dir: Path, *overrides: str, model: list[str] = TINY_GPT) -> subprocess.CompletedProcess:
    return run_script("train.py", *model, *SHORT_RUN, f"hydra.run.dir={run_dir}", f"paths.data_dir={run_dir.parent / 'data'}",
                      *overrides)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One real training run shared by the tests that need a checkpoint."""
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    result = train_tiny(run_dir)
    assert result.returncode == 0, result.stderr
    return run_dir
