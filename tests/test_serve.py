"""serve.py against clients that someone else wrote: a real server process, real HTTP, OpenAI's client, Chromium.
And the continuous batch under it: each row gets what it would get alone."""

import os
import random
import shutil
import signal
import socket
import threading
import time

import httpx
import pytest
import torch

from conftest import run_script
from serving import free_port, serving, sse_events

KEY = "test-key"
PROMPT = "ROMEO:"


@pytest.fixture(scope="module")
def server(tiny_run):
    with serving(tiny_run / "checkpoints" / "best.ckpt", "max_tokens=4000", "max_body_bytes=2000", key=KEY) as running:
        yield running


def greedy_text(tiny_run, prompt: str, tokens: int) -> str:
    """What sample.py generates greedily after ``prompt``."""
    result = run_script("sample.py", f"ckpt_path={tiny_run / 'checkpoints' / 'best.ckpt'}", f"prompt={prompt}",
                        "temperature=0", f"max_new_tokens={tokens}")
    assert result.returncode == 0, result.stderr
    return result.stdout.removeprefix(f"--- sample 1\n{prompt}").removesuffix("\n")


def test_batched_rows_get_what_they_would_get_alone():
    from gpt.models.configs import GPTConfig
    from gpt.models.generate import GenerationSettings
    from gpt.serve.engine import Engine, Request

    torch.manual_seed(0)
    rng = random.Random(0)
    # prompts and lengths past the context of 16: cache, joins, and the window that slides
    requests = [([rng.randrange(1, 40) for _ in range(rng.randrange(1, 24))], rng.randrange(1, 30)) for _ in range(10)]
    for pos in ("learned", "rope"):
        model = GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32, pos=pos).build().eval()

        def generate(indices, temperature, max_batch_size, stagger, model=model):
            engine = Engine(model, GenerationSettings(stop_ids=frozenset({0})), max_batch_size=max_batch_size).start()
            out, ended = {i: [] for i in indices}, []
            for i in indices:
                prompt, tokens = requests[i]
                settings = GenerationSettings(max_new_tokens=tokens, temperature=temperature, top_p=0.9)
                engine.submit([Request(prompt, settings, on_token=out[i].append,
                                       generator=torch.Generator().manual_seed(i),
                                       on_end=lambda *end: ended.append(end))])
                time.sleep(stagger * rng.random())
            while len(ended) < len(indices):
                time.sleep(0.002)
            engine.close()
            assert {reason for reason, _ in ended} <= {"stop", "length"}
            return out, engine

        for temperature in (0, 0.9):
            alone = {i: generate([i], temperature, 1, 0)[0][i] for i in range(len(requests))}
            together, engine = generate(range(len(requests)), temperature, 6, 0.003)
            assert together == alone, (pos, temperature)
            assert engine.tokens > 1.5 * engine.steps  # rows were generated together


def test_openai_client_completes_chats_streams_and_samples_n(server, tiny_run):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key=KEY)
    (model,) = client.models.list().data
    assert model.id == "run"  # the run directory's name
    greedy = greedy_text(tiny_run, PROMPT, 40)
    completion = client.completions.create(model=model.id, prompt=PROMPT, max_tokens=40, temperature=0)
    assert completion.choices[0].text == greedy and completion.choices[0].finish_reason == "length"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (len(PROMPT), 40)

    chunks = list(client.completions.create(model=model.id, prompt=PROMPT, max_tokens=40, temperature=0, stream=True))
    texts = [chunk.choices[0].text for chunk in chunks]
    assert len([text for text in texts if text]) >= 2 and "".join(texts) == greedy
    assert chunks[-1].choices[0].finish_reason == "length"

    chat = client.chat.completions.create(model=model.id, messages=[{"role": "user", "content": PROMPT}],
                                          max_tokens=40, temperature=0)
    assert chat.choices[0].message.content == greedy_text(tiny_run, PROMPT + "\n", 40)  # a line per message
    streamed = client.chat.completions.create(model=model.id, messages=[{"role": "user", "content": PROMPT}],
                                              max_tokens=40, temperature=0, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed) == chat.choices[0].message.content

    sampled = client.completions.create(model=model.id, prompt=[PROMPT, "JULIET:"], n=3, max_tokens=20, seed=7,
                                        temperature=1.0, stop=["\n\n"])
    assert [choice.index for choice in sampled.choices] == list(range(6))
    assert all("\n\n" not in choice.text for choice in sampled.choices)
    again = client.completions.create(model=model.id, prompt=[PROMPT, "JULIET:"], n=3, max_tokens=20, seed=7,
                                      temperature=1.0, stop=["\n\n"])
    assert [c.text for c in again.choices] == [c.text for c in sampled.choices]  # a seed repeats
    assert len({c.text for c in sampled.choices[:3]}) > 1  # and each of n has its own


def test_requests_sent_together_are_batched_and_each_gets_its_own_text(server, tiny_run):
    prompts = ["ROMEO:", "JULIET:\nO", "First Citizen:\nBefore we proceed", "KING"]
    alone = {prompt: server.post("/v1/completions", {"prompt": prompt, "max_tokens": 60, "temperature": 0}).json()
             for prompt in prompts}
    before = server.get("/health").json()
    results = {}

    def ask(prompt: str, copy: int) -> None:
        results[prompt, copy] = server.post("/v1/completions", {"prompt": prompt, "max_tokens": 60, "temperature": 0})

    threads = [threading.Thread(target=ask, args=(prompt, copy)) for prompt in prompts for copy in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = server.get("/health").json()
    for (prompt, _), response in results.items():
        assert response.json()["choices"][0]["text"] == alone[prompt]["choices"][0]["text"]
    assert after["tokens"] - before["tokens"] == 8 * 60
    assert after["steps"] - before["steps"] < 8 * 60 / 2  # most steps advanced several rows


def test_a_client_that_disconnects_mid_stream_frees_its_place(server):
    before = server.get("/health").json()
    body = {"prompt": PROMPT, "max_tokens": 4000, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=server.headers, timeout=60) as r:
        events = sse_events(r)
        next(events), next(events)  # two chunks, then the client leaves
    deadline = time.monotonic() + 20
    while (health := server.get("/health").json())["in_flight"] or health["generating"]:
        assert time.monotonic() < deadline, health
        time.sleep(0.05)
    assert health["tokens"] - before["tokens"] < 4000  # it stopped generating when its client left


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "the request body is not valid JSON"),
    ({"model": "gpt-4", "prompt": PROMPT}, 400, "unknown model 'gpt-4'; this server serves 'run'"),
    ({"prompt": "ROMEO: \u00e9t\u00e9"}, 400, "prompt: characters not in the tokenizer's vocabulary"),
    ({"prompt": PROMPT, "max_tokens": 4001}, 400, "max_tokens=4001 is more than this server's limit of 4000"),
    ({"prompt": PROMPT, "temperature": -1}, 400, "temperature: Input should be greater than or equal to 0"),
    ({"prompt": "x" * 3000}, 400, "the request body is larger than this server's limit of 2000 bytes"),
    ({"prompt": PROMPT, "n": 9}, 400, "n=9 asks for more than this server's 8 completions per request"),
    ({"prompt": ""}, 400, "prompt is empty"),
    ({"prompt": []}, 400, "prompt: an empty list; give a text, or a list of texts"),
    ({"messages": []}, 400, "prompt: Field required"),
    (b'{"prompt": "ROMEO:", "temperature": Infinity}', 400, "temperature: Input should be less than or equal to 2"),
    ({"prompt": PROMPT, "logprobs": 2}, 400, "logprobs is not supported by this server; leave it out"),
    ({"prompt": PROMPT, "seed": 1 << 70}, 400, "seed: Input should be less than 9223372036854775808"),
], ids=["malformed JSON", "unknown model", "outside the vocabulary", "max_tokens", "negative temperature",
        "body too large", "n", "empty prompt", "no prompts", "completions without a prompt", "temperature past 2",
        "logprobs", "seed too large"])
def test_bad_requests_get_an_openai_error_and_the_server_keeps_serving(server, body, status, message):
    options = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = httpx.post(server.url + "/v1/completions", headers=server.headers, timeout=60, **options)
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"
    assert server.post("/v1/completions", {"prompt": PROMPT, "max_tokens": 2}).status_code == 200


def test_a_prompt_longer_than_the_context_is_cropped_as_sample_py_crops_it(server, tiny_run):
    long_prompt = "Before we proceed any further, hear me speak. All: Speak, speak."  # the context is 32 tokens
    answer = server.post("/v1/completions", {"prompt": long_prompt, "max_tokens": 20, "temperature": 0}).json()
    assert answer["usage"]["prompt_tokens"] == len(long_prompt)
    assert answer["choices"][0]["text"] == greedy_text(tiny_run, long_prompt, 20)


def test_every_endpoint_asks_for_the_api_key(server):
    for method, path in (("GET", "/"), ("GET", "/health"), ("GET", "/v1/models"), ("POST", "/v1/completions"),
                         ("POST", "/v1/chat/completions")):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = httpx.request(method, server.url + path, headers=headers, json={}, timeout=60)
            assert response.status_code == 401, path
            assert response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.url + f"/?key={KEY}").status_code == 200  # the page, opened by its address
    assert httpx.get(server.url + f"/health?key={KEY}").status_code == 401  # only the page takes it so


def drive_page(url: str, prompt: str, max_tokens: int, screenshot, temperature: float = 0
               ) -> tuple[str, list[str], str]:
    """Open the page in Chromium and generate from ``prompt`` (greedily by default): (the output's final text, each
    text it showed on the way, the page's heading and description)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 720})
        page.goto(url)
        page.wait_for_function("document.getElementById('about').textContent !== ''")
        page.fill("#prompt", prompt)
        page.fill("#temperature", str(temperature))
        page.fill("#max-tokens", str(max_tokens))
        page.evaluate("""() => {  // every text the output shows, as the browser renders it
            const output = document.getElementById('output');
            window.shown = [];
            new MutationObserver(() => window.shown.push(output.textContent))
                .observe(output, {childList: true, subtree: true, characterData: true});
        }""")
        page.click("#go")
        page.wait_for_function("document.getElementById('status').textContent.includes('tokens in')")
        final, shown = page.text_content("#output"), page.evaluate("window.shown")
        heading = page.text_content("#name") + ": " + page.text_content("#about")
        page.screenshot(path=str(screenshot))
        browser.close()
    return final, shown, heading


@pytest.mark.skipif(not shutil.which("chromium"), reason="no Chromium here: apt-get install chromium "
                                                           "(.ci/run installs it)")
def test_the_page_streams_a_greedy_completion_in_chromium(server, tiny_run, tmp_path):
    screenshot = os.environ.get("GPT_PAGE_SCREENSHOT", tmp_path / "page.png")
    final, shown, heading = drive_page(f"{server.url}/?key={KEY}", PROMPT, 200, screenshot)
    assert final == PROMPT + greedy_text(tiny_run, PROMPT, 200)
    assert len({text for text in shown if text != final}) >= 2  # it showed the output as it came
    assert heading.startswith("run: text: a causal LM")
    assert os.path.getsize(screenshot) > 10_000


def test_a_request_past_max_requests_gets_429_and_sigterm_lets_the_running_stream_finish(tiny_run):
    with serving(tiny_run / "checkpoints" / "best.ckpt", "max_requests=1") as running:
        body = {"prompt": PROMPT, "max_tokens": 1000, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}
        with httpx.stream("POST", running.url + "/v1/completions", json=body, timeout=60) as response:
            events = sse_events(response)
            first = next(events)
            busy = running.post("/v1/completions", {"prompt": PROMPT, "max_tokens": 1})  # beyond max_requests=1
            assert busy.status_code == 429 and busy.json()["error"]["type"] == "rate_limit_error"
            running.process.send_signal(signal.SIGTERM)
            rest = list(events)
        *chunks, usage, done = rest
        assert done == "[DONE]" and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        text = "".join(chunk["choices"][0]["text"] for chunk in [first, *chunks])
        ended = chunks[-1]["choices"][0]["finish_reason"] == "stop"  # with the end token, which has no text
        assert len(chunks) > 10 and usage["usage"]["completion_tokens"] == len(text) + ended  # all of it
        assert running.process.wait(timeout=60) == 0
        assert "stopped by SIGTERM once its requests had ended" in running.process.communicate()[1]


def test_startup_failures_are_one_line_and_status_2(tmp_path):
    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("not a checkpoint")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        in_use = run_script("serve.py", f"ckpt_path={not_a_checkpoint}", f"port={port}")
    unloadable = run_script("serve.py", f"ckpt_path={not_a_checkpoint}", f"port={free_port()}")
    missing = run_script("serve.py")
    for result, message in ((in_use, f"cannot listen on 127.0.0.1:{port}: Address already in use; choose another"),
                            (unloadable, f"{not_a_checkpoint}"),
                            (missing, "ckpt_path is required")):
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
