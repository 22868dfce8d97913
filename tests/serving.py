"""serve.py as a user starts it, for the tests: a process of its own on a free port, stopped with SIGTERM."""

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest

from conftest import start_script


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Running:
    url: str
    process: object
    key: str | None = None

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def get(self, path: str, **options) -> httpx.Response:
        return httpx.get(self.url + path, headers=self.headers, timeout=60, **options)

    def post(self, path: str, body: dict | None = None, **options) -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers=self.headers, timeout=60, **options)


@contextmanager
def serving(ckpt_path, *overrides: str, key: str | None = None):
    """A running ``python serve.py ckpt_path=... port=<free>``, answering once ``/health`` does."""
    port = free_port()
    process = start_script("serve.py", f"ckpt_path={ckpt_path}", f"port={port}", *overrides,
                           env=None if key is None else {**os.environ, "GPT_API_KEY": key})
    server = Running(f"http://127.0.0.1:{port}", process, key)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"serve.py exited with status {process.returncode}: {process.communicate()[1][-2000:]}")
            try:
                if server.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("serve.py did not answer /health within 120 s")
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=60)


def sse_events(response: httpx.Response) -> Iterator[dict | str]:
    """The data of each server-sent event of a streamed response, as it arrives ("[DONE]" as it is)."""
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            yield data if data == "[DONE]" else json.loads(data)
