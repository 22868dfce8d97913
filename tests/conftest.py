import atexit
import os
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from warm_start import COLD, WarmPython

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO / "data" / "tinyshakespeare.txt"

# Each test process, and every process a test starts (they inherit it), uses its share of the cores: two
# pytest-xdist workers that each start train.py with a torch thread per core would run four threads on two cores,
# and OpenMP's spinning threads make that far slower on a busy machine. Set before torch is imported.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // WORKERS)))

# A model small enough to train for a few dozen steps in seconds on a CPU.
TINY_GPT = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32"]
SHORT_RUN = ["data.batch_size=16", "data.val_windows=64", "trainer.max_steps=60", "trainer.val_every_n_steps=30",
        "scheduler.warmup_steps=5", "trainer.enable_progress_bar=false"]


def compose_train(*overrides: str, tmp_path: Path, return_hydra_config: bool = False):
    """The training config as train.py composes it, with outputs under ``tmp_path``."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"paths.root_dir={REPO}", f"paths.output_dir={tmp_path}", *overrides],
                       return_hydra_config=return_hydra_config)


@cache
def warm_python() -> WarmPython:
    warm = WarmPython(cwd=REPO)
    atexit.register(warm.close)
    return warm


def run_script(script: str, *overrides: str, timeout: int = 300, env: dict | None = None
               ) -> subprocess.CompletedProcess:
    """Run one of the project's entry points the way a user does, from the repository root, in a process of its
    own (forked from a warm Python that has imported the libraries: tests/warm_start.py); ``python -m`` commands
    start cold. A command that runs past ``timeout`` seconds fails the test, naming the command."""
    command = [sys.executable, script, *overrides]
    started = time.monotonic()
    try:
        if script.endswith(".py") and not COLD:
            return warm_python().run([script, *overrides], cwd=REPO, env=env, timeout=timeout)
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        output = (e.stderr or b"")[-2000:].decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
        pytest.fail(f"stopped after {time.monotonic() - started:.0f} s (the limit is {timeout} s): "
                    f"python {' '.join(command[1:])}\n{output or ''}")


def start_script(script: str, *overrides: str, env: dict | None = None):
    """Start an entry point as ``run_script`` does without waiting for it: a ``subprocess.Popen``, or a process
    forked from the warm Python with the same ``pid``, ``poll``, ``wait``, ``send_signal``, ``kill`` and
    ``communicate`` (whose output is read at the end)."""
    if COLD:
        return subprocess.Popen([sys.executable, script, *overrides], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
    return warm_python().start([script, *overrides], cwd=REPO, env=env)


def train_tiny(run_dir: Path, *overrides: str, model: list[str] = TINY_GPT, env: dict | None = None
               ) -> subprocess.CompletedProcess:
    return run_script("train.py", *model, *SHORT_RUN, f"hydra.run.dir={run_dir}", f"paths.data_dir={run_dir.parent / 'data'}",
                      *overrides, env=env)


def sweep_tiny(sweep_dir: Path, *overrides: str, env: dict | None = None, timeout: int = 600
               ) -> subprocess.CompletedProcess:
    """A multirun (``-m``) of the tiny model; each job writes into a numbered subdirectory of ``sweep_dir``."""
    return run_script("train.py", "-m", *TINY_GPT, *SHORT_RUN, f"hydra.sweep.dir={sweep_dir}",
                      f"paths.data_dir={sweep_dir.parent / 'data'}", *overrides, env=env, timeout=timeout)


@pytest.fixture
def wandb_env(tmp_path) -> dict:
    """An environment with no W&B API key anywhere (so runs must go offline by themselves) and W&B's own
    config and cache under ``tmp_path``: nothing reaches the network or the user's files."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    env.update(NETRC=str(tmp_path / "no-netrc"), WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"),
               WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"), WANDB_DATA_DIR=str(tmp_path / "wandb-data"),
               WANDB_DISABLE_GIT="true", WANDB_SILENT="true")
    return env


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One real training run shared by the tests that need a checkpoint."""
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    result = train_tiny(run_dir)
    assert result.returncode == 0, result.stderr
    return run_dir
