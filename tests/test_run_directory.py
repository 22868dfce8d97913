"""A run (or sweep) directory is held from the check that runs before Hydra writes anything: a refused command never
rewrites the record of the live one, a lock that is not ours is refused in one line, a linked checkpoints directory
is a place to write, a stop says the whole command that resumes, and a refused command leaves no directory behind.
Real processes, real signals."""

import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gpt.metrics import read_result

from conftest import REPO, SHORT_RUN, TINY_GPT, run_script, start_script, train_tiny
from test_safety import LONG_RUN, one_error_line, start_training, step_of, wait_for_steps


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until ``path`` holds something: Hydra creates a file, then writes it, and a test that read it in between
    would compare with an empty record."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size):
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, f"{path} did not appear in time"
        time.sleep(0.01)


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.communicate(timeout=120)
    finally:
        process.kill()


def test_a_refused_run_leaves_the_live_runs_record_as_it_was(tmp_path):
    run = tmp_path / "B1"
    live = start_training(run, "seed=1")
    try:
        wait_for(run / ".hydra" / "overrides.yaml", live)  # Hydra has written the live run's record: torch loads next
        record = {name: (run / ".hydra" / name).read_text() for name in ("overrides.yaml", "config.yaml")}
        line = one_error_line(train_tiny(run, "seed=7", "optim.lr=0.5"))
        assert f"{run} is in use by another run (process {live.pid} on host" in line
        assert {name: (run / ".hydra" / name).read_text() for name in record} == record
    finally:
        stop(live)


def start_sweep(sweep_dir: Path, *overrides: str):
    args = ["-m", *TINY_GPT, *SHORT_RUN, *LONG_RUN, f"hydra.sweep.dir={sweep_dir}",
            f"paths.data_dir={sweep_dir.parent / 'data'}", *overrides]
    return start_script("train.py", *args)


def test_a_second_sweep_into_the_same_directory_changes_nothing_of_the_first(tmp_path):
    sweep = tmp_path / "sweep"
    first = start_sweep(sweep, "seed=1,2")
    try:
        wait_for(sweep / "multirun.yaml", first)
        time.sleep(1)
        before = {path: path.read_text() for path in [sweep / "multirun.yaml", *sweep.glob("0/.hydra/*.yaml")]}
        second = run_script("train.py", "-m", *TINY_GPT, "seed=3,4", f"hydra.sweep.dir={sweep}", timeout=120)
        line = one_error_line(second, only_line=True)
        assert f"{sweep} is in use by another sweep (process {first.pid} on host" in line
        assert {path: path.read_text() for path in before} == before
    finally:
        stop(first)


@pytest.mark.parametrize("lock", ["abc vm", "123456789012345678901 vm", ""])
def test_a_lock_that_is_not_ours_is_refused_in_one_line(tmp_path, lock):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".run.lock").write_text(lock)
    line = one_error_line(train_tiny(run), only_line=True)
    assert line == f"error: {run}/.run.lock is not a lock this project wrote ({lock!r}); if no run uses {run}, " \
                   "delete it"
    assert sorted(p.name for p in run.iterdir()) == [".run.lock"]


def test_a_checkpoints_directory_linked_to_another_disk_is_used_and_overwritten_in_place(tmp_path):
    run, disk = tmp_path / "run", tmp_path / "bigger-disk" / "checkpoints"
    disk.mkdir(parents=True)
    run.mkdir()
    (run / "checkpoints").symlink_to(disk)
    assert train_tiny(run, "trainer.max_steps=10").returncode == 0  # an empty linked directory holds no run
    assert step_of(disk / "last.ckpt") == 10
    result = train_tiny(run, "overwrite=true", "trainer.max_steps=20")
    assert result.returncode == 0, result.stderr
    assert (run / "checkpoints").is_symlink() and step_of(disk / "last.ckpt") == 20


def test_a_second_ctrl_c_says_the_step_it_stopped_at(tmp_path):
    run = tmp_path / "run"
    process = start_training(run, "callbacks.checkpoints.every_n_train_steps=10")
    try:
        wait_for_steps(run, process, 30)
        process.send_signal(signal.SIGINT)
        time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr[-2000:]
    line = stderr.strip().splitlines()[-1]
    found = re.fullmatch(r"stopped at step (\d+) by SIGINT(, without saving it)?; resume with: python train.py .*", line)
    assert found and int(found[1]) >= 30, line
    last = step_of(run / "checkpoints" / "last.ckpt")
    assert last == int(found[1]) if not found[2] else last < int(found[1])


def test_the_stop_message_gives_the_command_that_resumes(tmp_path):
    run = tmp_path / "run"
    process = start_training(run, "trainer.max_steps=60")
    try:
        wait_for_steps(run, process, 3)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    command = stderr.strip().splitlines()[-1].split("resume with: ", 1)[1]
    words = shlex.split(command)
    assert words[:2] == ["python", "train.py"] and words[-2:] == [f"hydra.run.dir={run}", "ckpt_path=last"]
    resumed = run_script(words[1], *words[2:])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert read_result(run)["steps"] == 60 and "stopped" not in read_result(run)


@pytest.mark.parametrize("override, message", [
    ("ckpt_path=last", "error: ckpt_path=last resumes the run of a directory, and a new one is made for this command; "
                       "name the run's directory: python train.py hydra.run.dir=<its directory> ckpt_path=last"),
    ("ckpt_path=runs/nope.ckpt", "error: checkpoint not found: runs/nope.ckpt; pass "
                                 "ckpt_path=<run dir>/checkpoints/last.ckpt, or ckpt_path=last with "
                                 "hydra.run.dir=<run dir>"),
])
def test_a_resume_that_cannot_work_is_refused_without_making_a_directory(tmp_path, override, message):
    outputs = REPO / "outputs"
    before = set(outputs.rglob("*")) if outputs.exists() else set()
    result = run_script("train.py", override)
    assert one_error_line(result, only_line=True) == message
    assert (set(outputs.rglob("*")) if outputs.exists() else set()) == before


def test_a_run_refused_by_its_resume_check_leaves_no_directory(tiny_run, tmp_path):
    run = tmp_path / "new"
    line = one_error_line(train_tiny(run, f"ckpt_path={tiny_run / 'checkpoints' / 'best.ckpt'}", "model.n_layer=2"))
    assert "holds another model: model.n_layer: checkpoint 1, given 2" in line
    assert not run.exists()
