"""Nothing run, nothing lost: a checkpoint never runs code, a run directory has one owner and is never silently
overwritten, a stop is a stop, faults give one line and keep what was there. Real processes, real signals."""

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import zipfile
from pathlib import Path

import lightning as L
import pytest
import torch

from gpt import RunStopped, UserError
from gpt.data.store import PreparedData
from gpt.data.windows import prepare_windows
from gpt.metrics import read_result
from gpt.models.configs import GPTConfig, ModelConfig
from gpt.training.checkpoint import load_checkpoint, write_checkpoint
from gpt.training.checkpoints import Checkpoints
from gpt.training.objectives import CausalLM
from gpt.training.run import quiet_libraries
from gpt.training.stops import StopOnSignal

from conftest import REPO, SHAKESPEARE, SHORT_RUN, TINY_GPT, run_script, start_script, train_tiny

LONG_RUN = ["trainer.max_steps=100000", "trainer.log_every_n_steps=1"]


def snapshot(directory: Path) -> dict[str, tuple]:
    """Every file below ``directory`` with its bytes (a link: its target) and modification time."""
    return {str(p.relative_to(directory)): (os.readlink(p) if p.is_symlink() else p.read_bytes(), p.lstat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file() or p.is_symlink()}


def copy_run(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, symlinks=True)
    return run


def one_error_line(result, only_line: bool = False) -> str:
    """The error line of a command that failed with exit status 2 (after progress bars, or alone: ``only_line``)."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and lines[-1].startswith("error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and (len(lines) == 1 or not only_line), result.stderr[-2000:]
    return lines[-1]


def step_of(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


# --------------------------------------------------------------------------- no code from checkpoints


def crafted_checkpoint(source: Path, out: Path, marker: Path, old_format: bool) -> Path:
    """A real checkpoint whose model config hides a call (Hydra's ``_target_``) that would create ``marker``."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    payload = {"_target_": "builtins.bool", "_args_": [{"_target_": "builtins.open", "file": str(marker), "mode": "w"}]}
    record = checkpoint["gpt"]
    if old_format:  # as main at e454eb4 wrote it: the model as a Hydra node of the run's config
        model = {"_target_": "gpt.model.GPTConfig", **{k: v for k, v in record["model"]["fields"].items()
                                                        if k != "vocab_size"}, "bias": payload}
        checkpoint["gpt"] = {"config": {**record["config"], "model": model}, "tokenizer": record["tokenizer"]}
    else:
        record["model"]["fields"]["bias"] = payload
    torch.save(checkpoint, out)
    return out


@pytest.mark.parametrize("old_format", [False, True])
def test_a_crafted_checkpoint_runs_nothing(tiny_run, tmp_path, old_format):
    marker = tmp_path / "marker"
    crafted = crafted_checkpoint(tiny_run / "checkpoints" / "best.ckpt", tmp_path / "crafted.ckpt", marker, old_format)
    line = one_error_line(run_script("sample.py", f"ckpt_path={crafted}", "max_new_tokens=5"))
    assert "model.bias must be true or false" in line
    # export.py, a resume and init_from read the record through the same function (gpt.training.checkpoint)
    line = one_error_line(train_tiny(tmp_path / "run", f"{'init_from' if old_format else 'ckpt_path'}={crafted}"))
    assert "model.bias must be true or false" in line
    assert not marker.exists()


@pytest.mark.parametrize("record, message", [
    ({"class": "os.system", "fields": {}}, "unknown model class 'os.system'"),
    ({"class": "gpt.configs.GPTConfig", "fields": {"vocab_size": 10, "n_layer": "1"}}, "model.n_layer must be an integer"),
    ({"class": "gpt.configs.GPTConfig", "fields": {"vocab_size": 10, "pos": ["rope"]}}, "model.pos=['rope'] is not a valid"),
    ({"class": "gpt.configs.GPTConfig", "fields": {"vocab_size": 10, "evil": 1}}, "model.evil is not a field"),
    ({"class": "gpt.configs.GPTConfig", "fields": "n_layer=1"}, "not a dict of fields"),
])
def test_a_model_is_rebuilt_from_known_classes_and_typed_values_only(record, message):
    with pytest.raises(UserError, match=re.escape(message)):
        ModelConfig.from_record(record, "x.ckpt")
    config = GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8)
    assert ModelConfig.from_record(config.to_record(), "x.ckpt") == config


# --------------------------------------------------------------------------- one owner, never silently overwritten


def test_a_run_refused_before_its_first_logged_step_can_be_started_again(tmp_path):
    run = tmp_path / "run"
    line = one_error_line(train_tiny(run, 'callbacks.text_samples.prompt="é"'))  # found as training starts
    assert "callbacks.text_samples.prompt: characters not in the tokenizer's vocabulary: 'é'" in line
    assert train_tiny(run, "trainer.max_steps=2").returncode == 0  # the same command, the prompt fixed


def test_a_finished_run_is_never_overwritten_by_a_new_one(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    before = snapshot(run)
    line = one_error_line(train_tiny(run))  # the README's command repeated, or a job requeued without ckpt_path
    assert "already holds a run" in line and "ckpt_path=last" in line and "overwrite=true" in line
    assert snapshot(run) == before  # Hydra's record of the config included


def test_overwrite_starts_over_and_cleans_what_killed_processes_left(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    old_result = read_result(run)
    (run / ".run.lock").write_text(f"999999999 {socket.gethostname()}\n")  # its process is gone: stale
    leftovers = [run / "checkpoints" / ".last.ckpt.999999999.tmp", run / ".result.json.999999999.tmp"]
    for leftover in leftovers:
        leftover.write_bytes(b"half written")
    result = train_tiny(run, "overwrite=true", "trainer.max_steps=30")
    assert result.returncode == 0, result.stderr
    assert read_result(run)["steps"] == 30 != old_result["steps"]
    assert not any(leftover.exists() for leftover in leftovers) and not (run / ".run.lock").exists()


def test_a_fast_dev_run_writes_nothing_into_an_existing_run(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    before = snapshot(run)
    result = train_tiny(run, "debug=fdr")
    assert result.returncode == 0, result.stderr
    assert "nothing was written" in result.stdout
    assert snapshot(run) == before


def test_a_failed_resume_names_what_differs_and_leaves_the_run_as_it_was(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    before = snapshot(run)
    line = one_error_line(train_tiny(run, "ckpt_path=last", "model.n_layer=3", "model.n_embd=64"))
    assert "model.n_layer: checkpoint 1, given 3" in line and "model.n_embd: checkpoint 32, given 64" in line
    assert snapshot(run) == before
    shutil.rmtree(run / "checkpoints")
    line = one_error_line(train_tiny(run, "ckpt_path=last"))
    assert line.startswith("error: no readable checkpoint in")
    assert {k: v for k, v in snapshot(run).items() if not k.startswith("checkpoints")} == \
        {k: v for k, v in before.items() if not k.startswith("checkpoints")}


# --------------------------------------------------------------------------- a stop is a stop


def start_training(run_dir: Path, *overrides: str, env: dict | None = None):
    args = [*TINY_GPT, *SHORT_RUN, *LONG_RUN, f"hydra.run.dir={run_dir}", f"paths.data_dir={run_dir.parent / 'data'}",
            *overrides]
    return start_script("train.py", *args, env=env)


def wait_for_steps(run_dir: Path, process: subprocess.Popen, steps: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    metrics = run_dir / "metrics.csv"
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) > steps):
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the run did not train in time"
        time.sleep(0.05)


def logged_steps(run_dir: Path) -> list[int]:
    return [int(line.split(",")[0]) for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]


def test_sigterm_saves_the_step_says_how_to_resume_and_exits_143(tmp_path):
    run = tmp_path / "run"
    process = start_training(run, "trainer.val_every_n_steps=5")
    try:
        wait_for_steps(run, process, 7)  # past its first validation: there is a best val/loss to report
        # another run in the same directory is refused at once: the first one holds it
        line = one_error_line(train_tiny(run, "ckpt_path=last"))
        assert f"is in use by another run (process {process.pid} on host" in line
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143, stderr[-2000:]
    step = int(re.fullmatch(rf"stopped at step (\d+) by SIGTERM; resume with: python train.py .* "
                            rf"hydra.run.dir={run} ckpt_path=last", stderr.strip().splitlines()[-1])[1])
    assert step >= 5 and step_of(run / "checkpoints" / "last.ckpt") == step
    assert read_result(run)["stopped"] == "SIGTERM" and read_result(run)["steps"] == step
    assert logged_steps(run)[-1] == step and not (run / ".run.lock").exists()
    resumed = train_tiny(run, "ckpt_path=last", f"trainer.max_steps={step + 5}", "trainer.log_every_n_steps=1",
                         "trainer.val_every_n_steps=5")
    assert resumed.returncode == 0, resumed.stderr
    assert read_result(run)["steps"] == step + 5 and "stopped" not in read_result(run)
    assert logged_steps(run) == list(range(1, step + 6))


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130),
                                          pytest.param(signal.SIGUSR1, 138, marks=pytest.mark.slow)])
def test_ctrl_c_and_sigusr1_stop_the_same_way(tmp_path, signum, code):
    run = tmp_path / "run"
    process = start_training(run)
    try:
        wait_for_steps(run, process, 3)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == code, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    step = int(re.fullmatch(rf"stopped at step (\d+) by {signum.name}; resume with: python train.py .* "
                            rf"hydra.run.dir={run} ckpt_path=last", last)[1])
    assert step_of(run / "checkpoints" / "last.ckpt") == step


def test_a_stop_during_a_validation_keeps_that_validations_best_checkpoint(tmp_path):
    class SignalWhileValidating(L.Callback):
        def on_validation_batch_end(self, trainer, *args):
            if trainer.global_step == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    stop = StopOnSignal()
    lm = CausalLM(GPTConfig(vocab_size=8, block_size=4, n_layer=1, n_head=1, n_embd=8), optimizer=torch.optim.AdamW)
    batches = [{"input_ids": torch.zeros(2, 4, dtype=torch.long), "labels": torch.zeros(2, 4, dtype=torch.long)}] * 4
    trainer = L.Trainer(max_steps=4, val_check_interval=2, callbacks=[Checkpoints(str(tmp_path)), SignalWhileValidating(),
                        stop], logger=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, default_root_dir=tmp_path)
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    quiet_libraries()
    with stop.installed(), pytest.raises(RunStopped):
        trainer.fit(lm, train_dataloaders=loader, val_dataloaders=loader)
    assert step_of(tmp_path / "best.ckpt") == 2 and os.readlink(tmp_path / "last.ckpt") == "best.ckpt"


def test_a_run_killed_while_validating_validates_that_step_when_resumed(tmp_path):
    """Step 20 both validates and falls on the checkpoint interval; the kill comes during its validation."""
    run = tmp_path / "run"
    schedule = ["trainer.max_steps=40", "trainer.val_every_n_steps=20", "callbacks.checkpoints.every_n_train_steps=10",
                "trainer.log_every_n_steps=1"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests" / "helpers")}
    killed = train_tiny(run, *schedule, "+callbacks.fault._target_=faults.KillWhileValidating",
                        "+callbacks.fault.step=20", env=env)
    assert killed.returncode == -signal.SIGKILL
    assert step_of(run / "checkpoints" / "last.ckpt") == 10  # step 20 is saved after its validation, not before
    resumed = train_tiny(run, *schedule, "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr
    rows = (run / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    validated = [int(row.split(",")[0]) for row in rows[1:] if row.split(",")[header.index("val/loss")]]
    assert validated == [20, 40] and logged_steps(run) == list(range(1, 41))
    assert read_result(run)["best_step"] in (20, 40)


# --------------------------------------------------------------------------- faults: one line, nothing lost


def test_a_full_disk_is_named_and_the_previous_checkpoint_kept(tmp_path):
    with open("/dev/full", "wb", buffering=0) as full, pytest.raises(UserError) as error:
        write_checkpoint({"weights": torch.zeros(100_000)}, full, "x/last.ckpt")
    assert str(error.value) == "could not save checkpoint x/last.ckpt: No space left on device; the previous one is kept"


@pytest.fixture
def small_disk(tmp_path):
    """A 400 kB file system: room for one checkpoint of the tiny model and its logs, not for two."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a small file system needs root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_run_on_a_full_disk_stops_with_one_line(small_disk, tmp_path):
    run = small_disk / "run"
    result = train_tiny(run, "callbacks.checkpoints.every_n_train_steps=10", f"paths.data_dir={tmp_path / 'data'}")
    line = one_error_line(result)
    assert re.fullmatch(r"error: could not save checkpoint .*last\.ckpt: No space left on device; the previous one "
                        r"is kept", line)
    checkpoint, _ = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 10


def corrupt_tensor_bytes(path: Path) -> None:
    """Write NaNs over part of the largest tensor's bytes, inside the file, as a bad disk or copy would."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_length, extra_length = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        f.seek(info.header_offset + 30 + name_length + extra_length)
        f.write(b"\x00\x00\xc0\x7f" * 64)


def test_corrupt_or_missing_checkpoints_are_refused_by_name_and_resume_falls_back(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    checkpoints = run / "checkpoints"
    corrupt = checkpoints / "newer.ckpt"
    shutil.copy(checkpoints / "best.ckpt", corrupt)
    corrupt_tensor_bytes(corrupt)
    line = one_error_line(run_script("sample.py", f"ckpt_path={corrupt}", "max_new_tokens=5"))
    assert "is corrupt: its tensors do not match the checksum saved with them" in line
    # last.ckpt a link whose target is gone, and the newest other checkpoint corrupt: the one before them is used
    (checkpoints / "best.ckpt").rename(checkpoints / "older.ckpt")
    os.utime(checkpoints / "older.ckpt", (0, 0))
    resumed = train_tiny(run, "ckpt_path=last", "trainer.max_steps=70")
    assert resumed.returncode == 0, resumed.stderr
    log = (run / "train.log").read_text()
    assert "skipping last.ckpt: checkpoint not found" in log and "skipping newer.ckpt" in log and "is corrupt" in log
    assert "resuming from " + str(checkpoints / "older.ckpt") in log
    assert step_of(checkpoints / "last.ckpt") == 70


def test_prepared_data_follows_the_content_of_the_text(tmp_path):
    text, out = tmp_path / "t.txt", tmp_path / "out"
    text.write_text("abcdefgh" * 2000)
    prepare_windows(text, out)
    stamp = (out / "train.bin").stat().st_mtime_ns
    os.utime(text)  # touched, the same text: kept
    prepare_windows(text, out)
    assert (out / "train.bin").stat().st_mtime_ns == stamp
    times = text.stat()
    text.write_text("hgfedcba" * 2000)  # another text of the same size, its time restored as cp -p and rsync -a do
    os.utime(text, ns=(times.st_atime_ns, times.st_mtime_ns))
    (out / ".train.bin.999999999.tmp").write_bytes(b"left by a killed process")
    prepare_windows(text, out)
    data = PreparedData(out)
    assert data.tokenizer.decode(data.split("train").tokens[:8].tolist()) == "hgfedcba"
    assert not (out / ".train.bin.999999999.tmp").exists()


def test_refused_options_leave_no_files(tmp_path):
    result = run_script("prepare.py", f"data.text_path={SHAKESPEARE}", "data.tokenizer=bpe", f"paths.data_dir={tmp_path}")
    assert one_error_line(result).startswith("error: data.tokenizer=bpe needs data.vocab_size")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- bad values: one line, exit 2, no files


@pytest.mark.parametrize("script, args, message", [
    ("train.py", ["optim.lr=nan"], "optim.lr must be a positive number, got nan"),
    ("train.py", ["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps must be a positive integer, got 0"),
    ("train.py", ["data.val_windows=-1"], "data.val_windows must be a positive integer, or null, got -1"),
    ("train.py", ["seed=abc"], "seed must be an integer, got 'abc'"),
    ("train.py", ["data.vocab_size=abc"], "data.vocab_size must be a positive integer, or null, got 'abc'"),
    ("train.py", ["data.vocab_size=4096.5"], "data.vocab_size must be a positive integer, or null, got 4096.5"),
    ("train.py", ["trainer.devices=0"], "trainer.devices must be a positive number of devices"),
    ("train.py", ["trainer.devices=-1"], "trainer.devices=-1 means every GPU, and no GPU was found"),
    ("train.py", ["trainer.precision=bogus"], "trainer.precision must be one of auto, 32-true"),
    ("train.py", ["trainer.accelerator=gpu"], "trainer.accelerator=gpu but no GPU was found"),
    ("train.py", ["init_from=/nonexistent/best.ckpt"], "init_from=/nonexistent/best.ckpt: no such file or directory"),
    ("prepare.py", ["data.text_path=x.txt", "data.vocab_size=abc"], "data.vocab_size must be a positive integer"),
    ("sample.py", ["ckpt_path=x.ckpt", "temperature=-1"], "temperature must be a non-negative number, got -1"),
    ("sample.py", ["ckpt_path=x.ckpt", "top_k=-1"], "top_k must be a positive integer, or null, got -1"),
    ("sample.py", ["ckpt_path=x.ckpt", "max_new_tokens=abc"], "max_new_tokens must be a non-negative integer"),
    ("sample.py", ["ckpt_path=x.ckpt", "temperature=abc"], "temperature must be a non-negative number, got 'abc'"),
    ("sample.py", ["ckpt_path=x.ckpt", "device=cuda"], "device=cuda but CUDA is not available here"),
])
def test_bad_values_are_one_line_before_any_file_is_written(tmp_path, script, args, message):
    if "cuda" in message.lower() and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    run_dir = tmp_path / "run"
    line = one_error_line(run_script(script, *args, f"hydra.run.dir={run_dir}"), only_line=True)
    assert line.startswith(f"error: {message}")
    assert not run_dir.exists()
