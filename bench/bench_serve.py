"""Serving throughput: concurrent streaming clients against a real ``serve.py`` process, with its continuous batch
and with one request at a time.

    python bench/bench_serve.py                                   # the default model and model=gpt2
    python bench/bench_serve.py --ckpt <run dir>/checkpoints/best.ckpt --models default

Each model is served twice: with the continuous batch (``max_batch_size=32``), then with ``max_batch_size=1``,
which serves the same requests one at a time (the others wait). For 1, 8 and 32 clients, each client streams its
requests one after another (prompts: the first 24 characters of lines of Tiny Shakespeare; greedy;
``max_tokens`` new tokens each). Printed, as a markdown table: requests/s, generated tokens/s, and the time to the
first token (p50 and p95); then the gain in tokens/s of batching at each client count, and the time to the first
token of a request that arrives while 8 streams of 100 tokens are running. Without ``--ckpt`` the default model
has random weights, as GPT-2 has: the speed is the same, only the text differs.
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO / "data" / "tinyshakespeare.txt"
# per model: the requests of each client and the new tokens of each request (GPT-2 is ~150x the default model).
# A prompt (24 characters) and its new tokens fit the default model's context of 64, so that each new token is one
# step of the KV cache (past the context every token is computed afresh: bench/bench_generate.py)
LOADS = {"default": (4, 40), "gpt2": (1, 32)}
PROMPT_CHARS = 24


def random_checkpoint(model: str, path: Path) -> None:
    """A checkpoint of ``conf/model/<model>.yaml`` with random weights, as train.py writes one."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from gpt.data.tokenizers import fit_tokenizer
    from gpt.training.checkpoint import CheckpointRecord, save_checkpoint_file

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", "paths.root_dir=.", "paths.output_dir=."])
    tokenizer = fit_tokenizer(cfg.data.tokenizer, [SHAKESPEARE.read_text()])
    config = instantiate(cfg.model, vocab_size=tokenizer.vocab_size)
    checkpoint = {"state_dict": {f"model.{key}": value for key, value in config.build().state_dict().items()}}
    CheckpointRecord(config, tokenizer.to_dict()).write_into(checkpoint)
    save_checkpoint_file(checkpoint, path)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(ckpt: Path, *overrides: str) -> Iterator[str]:
    """The address of ``python serve.py`` running in a process of its own for the length of a ``with`` block."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "serve.py", f"ckpt_path={ckpt}", f"port={port}", *overrides],
                               cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        while not answers(url + "/health"):
            if process.poll() is not None:
                raise RuntimeError(f"serve.py did not start: {process.stderr.read()}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=120)


def answers(url: str) -> bool:
    try:
        return httpx.get(url).status_code == 200
    except httpx.TransportError:
        return False


async def stream(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> tuple[float, int]:
    """(seconds to the first text, tokens generated) of one streamed completion."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    started, first, tokens = time.perf_counter(), None, 0
    async with client.stream("POST", url + "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and any(choice["text"] for choice in chunk["choices"]):
                first = time.perf_counter()
    return (first or time.perf_counter()) - started, tokens


async def load(url: str, clients: int, requests: int, max_tokens: int, prompts: list[str]) -> dict:
    """``clients`` clients at once, each streaming ``requests`` requests one after another."""
    async with httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=clients + 1)) as client:
        async def client_loop(i: int) -> list[tuple[float, int]]:
            return [await stream(client, url, prompts[(i * requests + j) % len(prompts)], max_tokens)
                    for j in range(requests)]

        started = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(client_loop(i) for i in range(clients))) for r in rs]
        seconds = time.perf_counter() - started
    firsts = sorted(first for first, _ in results)
    return {"requests/s": len(results) / seconds, "tokens/s": sum(tokens for _, tokens in results) / seconds,
            "p50": statistics.median(firsts), "p95": firsts[min(len(firsts) - 1, round(0.95 * (len(firsts) - 1)))]}


async def late_arrival(url: str, prompts: list[str]) -> float:
    """Seconds to the first token of a request sent while 8 streams of 100 tokens are generating."""
    async with httpx.AsyncClient(timeout=None) as client:
        long = [asyncio.ensure_future(stream(client, url, prompt, 100)) for prompt in prompts[:8]]
        while (await client.get(url + "/health")).json().get("generating", 0) < 1:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        first, _ = await stream(client, url, prompts[8], 8)
        await asyncio.gather(*long)
    return first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["default", "gpt2"], choices=list(LOADS))
    parser.add_argument("--ckpt", help="the default model's checkpoint (default: random weights)")
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 8, 32])
    args = parser.parse_args()
    prompts = [line[:PROMPT_CHARS] for line in SHAKESPEARE.read_text().splitlines() if len(line) >= PROMPT_CHARS][:200]
    print(f"{os.cpu_count()} cores; {sys.platform}; streaming clients over HTTP on this machine\n")
    rows, gains, late = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            ckpt = Path(args.ckpt) if model == "default" and args.ckpt else Path(tmp) / f"{model}.ckpt"
            if not ckpt.exists():
                random_checkpoint("gpt" if model == "default" else model, ckpt)
            requests, max_tokens = LOADS[model]
            measured = {}
            for batch, label in ((32, "continuous batch"), (1, "one at a time")):
                with serving(ckpt, f"max_batch_size={batch}", "max_requests=256") as url:
                    asyncio.run(load(url, 2, 1, 8, prompts))  # warm up
                    for clients in args.clients:
                        measured[label, clients] = result = asyncio.run(
                            load(url, clients, requests, max_tokens, prompts))
                        rows.append(f"| {model} | {clients} | {label} | {result['requests/s']:.2f} | "
                                    f"{result['tokens/s']:.0f} | {result['p50']:.3f} | {result['p95']:.3f} |")
                        print(rows[-1], flush=True)
                    late.append(f"{model}, {label}: {asyncio.run(late_arrival(url, prompts)):.3f} s")
            for clients in args.clients:
                batched, alone = measured["continuous batch", clients], measured["one at a time", clients]
                gain = batched["tokens/s"] / alone["tokens/s"]
                gains.append(f"{model}, {clients} clients: {gain:.1f}x")
    print("\n| model | clients | serving | requests/s | tokens/s | first token p50 (s) | p95 (s) |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\ntokens/s, continuous batch / one at a time: " + "; ".join(gains))
    print("first token of a request sent while 8 streams of 100 tokens run: " + "; ".join(late))


if __name__ == "__main__":
    main()
