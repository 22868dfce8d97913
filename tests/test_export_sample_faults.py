"""export.py never mixes its files with what an out_dir held and says why it cannot write in one line; sample.py
bounds the new tokens and prints a single sample as it is generated. Real processes."""

import subprocess
import sys
import time

import pytest

from conftest import REPO, run_script
from test_safety import one_error_line


def test_export_refuses_an_out_dir_that_holds_files_and_overwrite_replaces_it_whole(tiny_run, tmp_path):
    out = tmp_path / "exported"
    out.mkdir()
    (out / "vocab.json").write_text("{}")  # left by an export of a GPT-2-token model
    ckpt = f"ckpt_path={tiny_run / 'checkpoints' / 'best.ckpt'}"
    line = one_error_line(run_script("export.py", ckpt, f"out_dir={out}"), only_line=True)
    assert line == f"error: out_dir={out} already holds files (vocab.json); choose another out_dir, or replace it " \
                   "whole with overwrite=true"
    assert sorted(p.name for p in out.iterdir()) == ["vocab.json"]
    result = run_script("export.py", ckpt, f"out_dir={out}", "overwrite=true")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "special_tokens_map.json",
                                                     "tokenizer.json", "tokenizer_config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]  # nothing left beside it


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only file system (the tests run as root, whom file modes do not stop)."""
    directory = tmp_path / "ro"
    directory.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=100k", "tmpfs", str(directory)],
                      capture_output=True).returncode:
        pytest.skip("mounting a file system needs root")
    yield directory
    subprocess.run(["umount", "-l", str(directory)], capture_output=True)


def test_export_into_a_read_only_directory_is_one_line(tiny_run, read_only_dir):
    out = read_only_dir / "exported"
    line = one_error_line(run_script("export.py", f"ckpt_path={tiny_run / 'checkpoints' / 'best.ckpt'}",
                                     f"out_dir={out}"), only_line=True)
    assert line == f"error: cannot write {out} (Read-only file system); choose another out_dir=..."


def test_sample_bounds_the_new_tokens(tiny_run):
    line = one_error_line(run_script("sample.py", f"ckpt_path={tiny_run / 'checkpoints' / 'best.ckpt'}",
                                     "max_new_tokens=1000000000", "temperature=0"), only_line=True)
    assert line == "error: max_new_tokens must be a non-negative integer of at most 100,000, got 1000000000; " \
                   "generate a longer text in several calls, each from the end of the last"


def test_a_single_sample_is_printed_as_it_is_generated(tiny_run):
    process = subprocess.Popen([sys.executable, "sample.py", f"ckpt_path={tiny_run / 'checkpoints' / 'best.ckpt'}",
                                "max_new_tokens=100000", "temperature=0", "prompt=ROMEO:"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        received = b""
        deadline = time.monotonic() + 120
        while len(received) < 300:  # more than the prompt: generated text, while generation goes on
            received += process.stdout.read1(4096)
            assert time.monotonic() < deadline, received
        assert process.poll() is None  # 100,000 tokens take far longer: the text came as it was generated
        assert received.startswith(b"--- sample 1\nROMEO:")
    finally:
        process.kill()
        process.communicate()
