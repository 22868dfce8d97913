"""Data preparation under faults: a text edited while it is prepared is prepared again, a count that cannot fit in
memory is one line, a signal stops generation and preparation at once with nothing half-written left, a full disk
and a directory given as a file are one line, and an end token written in an answer is refused by its line. Real
processes, real signals, real files."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpt.data.store import PreparedData

from conftest import REPO, SHAKESPEARE, TINY_GPT, run_script
from test_safety import one_error_line, small_disk  # noqa: F401 (a fixture)


def train_on(run: Path, *overrides: str) -> subprocess.CompletedProcess:
    """train.py on data other than windows (whose keys SHORT_RUN sets)."""
    return run_script("train.py", *TINY_GPT, "trainer.max_steps=4", "trainer.enable_progress_bar=false",
                      f"hydra.run.dir={run}", f"paths.data_dir={run.parent / 'data'}", *overrides)


def start(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, script, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for_line(process: subprocess.Popen, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        if text in line:
            return
        assert time.monotonic() < deadline, f"no {text!r} in time"
    raise AssertionError(f"the process ended without {text!r}")


def test_a_text_edited_while_it_is_prepared_is_prepared_again(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text(SHAKESPEARE.read_text() * 40)  # 45 MB: seconds of reading
    process = start("prepare.py", f"data.text_path={text}", f"paths.data_dir={tmp_path / 'data'}", "data.num_proc=1")
    try:
        wait_for_line(process, "preparing")
        text.write_text("abc\n" * 200_000)  # another text, with other characters, written while it is read
        output, _ = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 0, output[-2000:]
    data = PreparedData(next((tmp_path / "data").iterdir()))
    # the new text's characters and its 800,000 tokens, then the end token of its document
    assert data.tokenizer.chars == "\nabc" and data.meta["train_tokens"] + data.meta["val_tokens"] == 800_001
    assert data.tokenizer.decode(data.split("train").tokens[:8].tolist()) == "abc\nabc\n"


def test_a_count_that_cannot_fit_in_memory_is_one_line_before_anything_is_written(tmp_path):
    result = train_on(tmp_path / "run", "data=arithmetic", "data.digits=9", "data.train_examples=1000000000")
    line = one_error_line(result, only_line=True)
    assert line.startswith("error: data.train_examples=1,000,000,000 + data.test_examples=1,000 problems need about "
                           "600.0 GB of memory to generate and prepare")
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize("args, after, within", [
    # drawing 5 million problems, or still loading the libraries on a busy machine (then the stop waits for them)
    (["data=arithmetic", "data.digits=6", "data.train_examples=5000000"], 3, 30),
    # while torch and Lightning load: an import stopped half-way left scipy's extension half-registered, and its
    # next import was a traceback; the stop now waits for the imports to finish
    ([], 0.5, 60),
], ids=["while generating problems", "while the libraries load"])
def test_sigterm_stops_train_py_and_leaves_nothing(tmp_path, args, after, within):
    run, data = tmp_path / "run", tmp_path / "data"
    process = start("train.py", *args, f"hydra.run.dir={run}", f"paths.data_dir={data}")
    try:
        while not (run / "train.log").exists():
            assert process.poll() is None
            time.sleep(0.01)
        time.sleep(after)
        process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143 and time.monotonic() - sent < within, output[-2000:]
    assert output.strip().splitlines()[-1] == "stopped by SIGTERM; nothing half-written was kept"
    assert not list(data.rglob("*.*")) and not run.exists()


def test_sigterm_stops_prepare_py_and_leaves_nothing(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text(SHAKESPEARE.read_text() * 40)
    process = start("prepare.py", f"data.text_path={text}", f"paths.data_dir={tmp_path / 'data'}", "data.num_proc=2")
    try:
        wait_for_line(process, "preparing")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143, output[-2000:]
    assert output.strip().splitlines()[-1] == "stopped by SIGTERM; nothing half-written was kept"
    assert not (tmp_path / "data").exists()


def test_an_end_token_written_in_an_answer_is_refused_by_its_line(tmp_path):
    path = tmp_path / "qa.jsonl"
    lines = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(20)]
    lines[12]["answer"] = "13<|endoftext|>"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    line = one_error_line(train_on(tmp_path / "run", "data=jsonl", f"data.text_path={path}"))
    assert line == f"error: {path}:13 has <|endoftext|> in its answer, which the tokenizers read as a special " \
                   "token, not as text (<|endoftext|> ends every answer); remove it"
    assert not (tmp_path / "run").exists()


def test_a_jsonl_path_that_is_a_directory_is_one_line_and_leaves_no_run(tmp_path):
    line = one_error_line(train_on(tmp_path / "run", "data=jsonl", f"data.text_path={tmp_path}"))
    assert line == f"error: data file is a directory: {tmp_path}; set data.text_path to a JSONL file of prompts " \
                   "and answers"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("script", ["prepare.py", "train.py"])
def test_a_full_disk_while_preparing_is_one_line_and_leaves_nothing(small_disk, tmp_path, script):  # noqa: F811
    args = [f"data.text_path={SHAKESPEARE}", f"paths.data_dir={small_disk / 'data'}"]
    if script == "train.py":
        args += [f"hydra.run.dir={tmp_path / 'run'}", "trainer.max_steps=2"]
    line = one_error_line(run_script(script, *args))
    assert line.startswith(f"error: could not prepare the data in {small_disk / 'data'}/") and line.endswith(
        ": no space left on the device; free some space, or prepare it elsewhere with paths.data_dir=...")
    assert list(Path(small_disk).iterdir()) == []
