"""Start the entry points from a process that has already imported the libraries they load.

Importing Lightning takes most of a short run's time on a small CPU (8 of its 10 seconds), and the suite starts
a few hundred runs. So each test process keeps one warm Python that has imported torch, Lightning and Hydra,
and a command is run in a fork of it: a process of its own with its own pid, working directory, environment,
argv, stdout and stderr, running the script as ``__main__`` through the interpreter's normal exit (exit status,
traceback, atexit, signals). Only the imports are shared, and our own package is not among them. Set
``GPT_TESTS_COLD_START=1`` to start every command as a fresh interpreter instead.

Run as a script, this module is the warm process: it reads a JSON request per line and answers the child's pid,
then its exit status.
"""
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COLD = os.environ.get("GPT_TESTS_COLD_START") == "1"


class WarmPython:
    """The client: ``run`` behaves as ``subprocess.run(capture_output=True, text=True)`` of ``python script ...``,
    ``start`` as ``subprocess.Popen`` for what the tests use of it; several commands may run at once."""

    def __init__(self, cwd: Path):
        self.server = subprocess.Popen([sys.executable, __file__], cwd=cwd, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.pending, self.answers, self.started = b"", {}, 0

    def start(self, argv: list[str], cwd: Path, env: dict | None) -> "WarmProcess":
        self.started += 1
        return WarmProcess(self, self.started, argv, cwd, env)

    def run(self, argv: list[str], cwd: Path, env: dict | None, timeout: float) -> subprocess.CompletedProcess:
        process = self.start(argv, cwd, env)
        try:
            stdout, stderr = process.communicate(timeout)
        except subprocess.TimeoutExpired as e:
            process.kill()
            e.stdout, e.stderr = process.communicate()
            raise
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    def request(self, request: dict) -> None:
        self.server.stdin.write((json.dumps(request) + "\n").encode())
        self.server.stdin.flush()

    def answer(self, ident: int, key: str, timeout: float | None):
        """The server's ``key`` for command ``ident``, waiting up to ``timeout`` seconds (TimeoutError)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        fd = self.server.stdout.fileno()
        while key not in self.answers.get(ident, {}):
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError("the warm Python process ended")
            self.pending += chunk
            *lines, self.pending = self.pending.split(b"\n")
            for line in lines:
                answer = json.loads(line)
                self.answers.setdefault(answer.pop("id"), {}).update(answer)
        return self.answers[ident][key]

    def close(self):
        self.server.stdin.close()
        self.server.wait(timeout=30)


class WarmProcess:
    """A command running in a fork of the warm Python, with the part of ``subprocess.Popen`` the tests use: pid,
    poll, wait, send_signal, kill, communicate (its output is read when it has ended)."""

    def __init__(self, warm: WarmPython, ident: int, argv: list[str], cwd: Path, env: dict | None):
        self.warm, self.ident, self.args, self.returncode = warm, ident, [sys.executable, *argv], None
        self.captured = tempfile.TemporaryDirectory()
        self.out, self.err = Path(self.captured.name, "stdout"), Path(self.captured.name, "stderr")
        warm.request({"id": ident, "argv": argv, "cwd": str(cwd), "env": dict(os.environ if env is None else env),
                      "stdout": str(self.out), "stderr": str(self.err)})
        self.pid = warm.answer(ident, "pid", timeout=120)

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            try:
                self.returncode = self.warm.answer(self.ident, "returncode", timeout)
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout) from None
        return self.returncode

    def poll(self) -> int | None:
        try:
            return self.wait(timeout=0)
        except subprocess.TimeoutExpired:
            return None

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self.out.read_text(errors="replace"), self.err.read_text(errors="replace")


def become(request: dict):
    """In the fork: take the command's place and run its script as ``__main__``; never returns to the loop."""
    import importlib
    import runpy

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY | os.O_CREAT),
                            (2, request["stderr"], os.O_WRONLY | os.O_CREAT)):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    script = request["argv"][0]
    sys.argv = list(request["argv"])
    # sys.path as a fresh interpreter starts it: the script's directory, then PYTHONPATH, then the rest
    python_path = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    sys.path[:1] = [str(Path(script).resolve().parent), *python_path]
    importlib.invalidate_caches()
    runpy.run_path(script, run_name="__main__")
    raise SystemExit(0)


def serve():
    import hydra  # noqa: F401  the imports every entry point pays for, once
    import lightning.pytorch  # noqa: F401
    import torch  # noqa: F401

    def answer(**fields):
        os.write(1, (json.dumps(fields) + "\n").encode())

    children, pending = {}, b""  # pid -> the command's id
    while True:
        if select.select([0], [], [], 0.02 if children else None)[0]:
            chunk = os.read(0, 65536)
            if not chunk:
                return
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    become(request)
                children[pid] = request["id"]
                answer(id=request["id"], pid=pid)
        while children and (ended := os.waitpid(-1, os.WNOHANG))[0]:
            answer(id=children.pop(ended[0]), returncode=os.waitstatus_to_exitcode(ended[1]))


if __name__ == "__main__":
    serve()
