"""The HTTP server of ``serve.py``: OpenAI's completions and chat endpoints over the continuous batch of
``gpt.serve.engine``, a fill-mask endpoint for a masked LM, a score endpoint for a reward model, and a page at
``/`` to try the model.

Built on FastAPI and uvicorn rather than LitServe: LitServe batches whole requests per ``predict`` call in worker
processes of its own, while rows here join and leave the batch at every token, which takes one loop that owns the
model. FastAPI gives that loop what HTTP needs (server-sent events, a client's disconnect, checked bodies) and
nothing more.
"""

import asyncio
import hmac
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from gpt import UserError
from gpt.data.tokenizers import TextStream
from gpt.models.generate import fill_masks
from gpt.serve.engine import Engine
from gpt.serve.engine import Request as Row
from gpt.serve.openai_api import (
    ApiError,
    Body,
    ChatBody,
    CompletionBody,
    FillMaskBody,
    Reply,
    Sampling,
    ScoreBody,
    event,
)
from gpt.serve.served import KINDS, Served

PAGE = Path(__file__).with_name("page.html")
GREEDY_BELOW = 1e-3  # a temperature below it is greedy: logits divided by less would overflow


@dataclass(frozen=True)
class Limits:
    """What one request may ask, and how many may be served at once."""

    max_tokens: int = 1024  # new tokens per completion
    default_max_tokens: int = 256  # when a request gives none
    max_n: int = 8  # completions per request (prompts x n)
    max_requests: int = 64  # requests being served at once (generating or waiting); more get a 429
    max_body_bytes: int = 65536
    api_key: str | None = None


class Server:
    """The state behind the routes: the model, its engine (for causal LMs) and the requests in flight."""

    def __init__(self, served: Served, limits: Limits, engine: Engine | None):
        self.served, self.limits, self.engine = served, limits, engine
        self.in_flight = 0
        self.model_lock = asyncio.Lock()  # fill-mask and score run one at a time, off the event loop

    async def body(self, request: Request, shape: type[Body], kind: str | None = None):
        """The request's body, checked: its shape, the model it names, and the kind of model its endpoint needs."""
        body = shape.parse(await read_body(request, self.limits.max_body_bytes))
        name = self.served.name
        if body.model is not None and body.model != name:
            raise ApiError(400, f"unknown model {body.model!r}; this server serves {name!r} (GET /v1/models)",
                           param="model", code="model_not_found")
        if kind is not None and self.served.kind != kind:
            raise ApiError(400, f"{name} is {KINDS[self.served.kind]}; {request.url.path} needs {KINDS[kind]}")
        return body

    async def on_model(self, function, *args):
        """``function(*args)`` off the event loop, one at a time (fill-mask and score, which the engine does not
        run)."""
        with self.place():
            async with self.model_lock:
                return await asyncio.to_thread(function, *args)

    def encode(self, text: str, what: str) -> list[int]:
        try:
            ids = self.served.tokenizer.encode(text)
        except UserError as e:
            raise ApiError(400, f"{what}: {e}", param=what) from None
        if not ids:
            raise ApiError(400, f"{what} is empty; give a text to continue", param=what)
        return ids

    def rows(self, prompts: list[list[int]], body: Sampling, max_tokens: int | None) -> list[Row]:
        """The engine's requests of a completion request: ``n`` per prompt (OpenAI's order: prompt-major)."""
        if self.served.kind not in ("text", "answers"):
            endpoint = "/v1/fill_mask" if self.served.kind == "masked" else "/v1/score"
            raise ApiError(400, f"{self.served.name} is {KINDS[self.served.kind]}; use {endpoint}")
        limits = self.limits
        max_tokens = limits.default_max_tokens if max_tokens is None else max_tokens
        if max_tokens > limits.max_tokens:
            raise ApiError(400, f"max_tokens={max_tokens} is more than this server's limit of {limits.max_tokens}; "
                                "ask for fewer", param="max_tokens")
        if len(prompts) * body.n > limits.max_n:
            raise ApiError(400, f"{len(prompts)} prompt(s) x n={body.n} asks for more than this server's "
                                f"{limits.max_n} completions per request", param="n")
        temperature = 0 if body.temperature < GREEDY_BELOW else body.temperature
        settings = replace(self.engine.settings, max_new_tokens=max_tokens, temperature=temperature,
                           top_k=body.top_k, top_p=body.top_p)
        device = next(self.served.model.parameters()).device
        rows = []
        for prompt in prompts:
            for _ in range(body.n):
                generator = (None if body.seed is None else
                             torch.Generator(device).manual_seed((body.seed + len(rows)) % (1 << 63)))
                rows.append(Row(prompt, settings, on_token=None, on_end=None, generator=generator))
        return rows

    def take_place(self) -> None:
        """A place among the requests served at once, or a 429 when there is none (``free_place`` gives it back)."""
        if self.in_flight >= self.limits.max_requests:
            raise ApiError(429, f"the server is serving its limit of {self.limits.max_requests} requests; retry "
                                "shortly", kind="rate_limit_error")
        self.in_flight += 1

    def free_place(self) -> None:
        self.in_flight -= 1

    @contextmanager
    def place(self) -> Iterator[None]:
        self.take_place()
        try:
            yield
        finally:
            self.free_place()


class Completion:
    """The rows of one request being generated: each row's text as its tokens arrive from the engine's thread,
    cut at a stop text, and what is new to send."""

    def __init__(self, server: Server, rows: list[Row], stops: list[str]):
        self.rows, self.stops = rows, stops
        tokenizer = server.served.tokenizer
        self.eot_id, self.streams = tokenizer.eot_id, [TextStream(tokenizer) for _ in rows]
        self.texts, self.sent, self.reasons = [""] * len(rows), [0] * len(rows), [None] * len(rows)
        self.tokens = [0] * len(rows)  # generated before each row ended (not those after a stop text)
        self.events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        for i, row in enumerate(rows):
            row.on_token = lambda token, i=i: loop.call_soon_threadsafe(self.events.put_nowait, (i, token, None, None))
            row.on_end = lambda reason, error, i=i: loop.call_soon_threadsafe(self.events.put_nowait,
                                                                               (i, None, reason, error))
        server.engine.submit(rows)

    def cancel(self) -> None:
        """The rows leave the batch at its next step (a client that left)."""
        for row in self.rows:
            row.cancelled = True

    async def pieces(self) -> AsyncIterator[tuple[int, str, str | None]]:
        """(row, new text, finish reason or None) as each token arrives, until every row has ended: a chunk per
        token, as OpenAI's API streams them, however busy the event loop was."""
        while None in self.reasons:
            i, token, reason, error = await self.events.get()
            if self.reasons[i] is not None:
                continue  # a row cut at a stop text: its later tokens were generated before it left
            if error is not None:
                raise ApiError(500, f"generation failed: {error}", kind="server_error")
            self.tokens[i] += token is not None
            if token is not None and token != self.eot_id:
                self.texts[i] += self.streams[i].push(token)
            elif token is None:
                self.texts[i] += self.streams[i].flush()
            yield (i, *self.advance(i, reason))

    def advance(self, i: int, reason: str | None) -> tuple[str, str | None]:
        """The new text of row ``i`` that can be sent, and its finish reason once it has ended: a stop text ends it
        (and is not sent); text that may begin a stop text waits for the next token."""
        text = self.texts[i]
        cut = min((at for at in (text.find(stop) for stop in self.stops) if at >= 0), default=-1)
        if cut >= 0:
            self.texts[i], reason = text[:cut], "stop"
            self.rows[i].cancelled = True
        held = 0 if reason else max((len(stop) - 1 for stop in self.stops), default=0)
        end = max(self.sent[i], len(self.texts[i]) - held)
        piece, self.sent[i], self.reasons[i] = self.texts[i][self.sent[i]:end], end, reason
        return piece, reason

    def counts(self, prompts: list[list[int]]) -> tuple[int, int]:
        """(prompt tokens, completion tokens): each prompt once, each row's generated tokens."""
        return sum(map(len, prompts)), sum(self.tokens)


def build_app(served: Served, limits: Limits, engine: Engine | None) -> FastAPI:
    server = Server(served, limits, engine)
    app = FastAPI(title=f"gpt: {served.name}", dependencies=[Depends(key_checker(limits.api_key))],
                  docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse(ApiError(error.status_code, str(error.detail)).body(), status_code=error.status_code)

    @app.get("/health")
    async def health() -> dict:
        counts = {"generating": engine.rows, "steps": engine.steps, "tokens": engine.tokens} if engine else {}
        return {"status": "ok", "in_flight": server.in_flight, **counts}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": served.name, "object": "model", "created": 0, "owned_by": "gpt",
                                            "kind": served.kind, "about": KINDS[served.kind],
                                            "context_length": served.block_size}]}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE.read_text()

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await server.body(request, CompletionBody)
        prompts = [server.encode(text, "prompt") for text in body.prompts]
        return await respond(server, request, body, prompts, body.max_tokens, Reply(False, served.name))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await server.body(request, ChatBody)
        prompt = server.encode(conversation_prompt(body, served.kind), "messages")
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        return await respond(server, request, body, [prompt], max_tokens, Reply(True, served.name))

    @app.post("/v1/fill_mask")
    async def fill_mask(request: Request) -> dict:
        body = await server.body(request, FillMaskBody, kind="masked")
        ids, tokenizer = server.encode(body.prompt, "prompt"), served.tokenizer
        if tokenizer.mask_id not in ids:
            raise ApiError(400, "the prompt has no [MASK]; write [MASK] where the model should fill in", "prompt")
        if len(ids) > served.block_size:
            raise ApiError(400, f"the prompt is {len(ids)} tokens, longer than the model's context of "
                                f"{served.block_size}", param="prompt")
        filled, top = await server.on_model(fill_masks, served.model, ids, tokenizer.mask_id, tokenizer.special_ids,
                                            body.top_k)
        masks = [[{"token": tokenizer.decode([token]), "probability": p} for token, p in options] for options in top]
        return {"object": "fill_mask", "model": served.name, "text": tokenizer.decode(filled), "masks": masks}

    @app.post("/v1/score")
    async def score(request: Request) -> dict:
        body = await server.body(request, ScoreBody, kind="reward")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        completions = [body.completion] * len(prompts) if isinstance(body.completion, str) else body.completion
        if len(completions) != len(prompts) or not 0 < len(prompts) <= limits.max_n:
            raise ApiError(400, f"give one completion per prompt, 1 to {limits.max_n} of them", param="completion")
        try:
            scores = await server.on_model(served.scorer.score, served.tokenizer, prompts, completions)
        except UserError as e:
            raise ApiError(400, str(e)) from None
        return {"object": "score", "model": served.name, "scores": scores}

    return app


def conversation_prompt(body: ChatBody, kind: str) -> str:
    """What the model reads of a conversation. A model of prompt -> answer examples answers the last user message;
    a plain LM continues the conversation's text: each message's content on a line of its own."""
    if kind == "answers":
        users = [message.text for message in body.messages if message.role == "user"]
        if not users:
            raise ApiError(400, "the conversation has no user message, which this model answers", param="messages")
        return users[-1]
    return "".join(message.text + "\n" for message in body.messages)


async def respond(server: Server, request: Request, body: Sampling, prompts: list[list[int]],
                  max_tokens: int | None, reply: Reply):
    rows = server.rows(prompts, body, max_tokens)
    server.take_place()
    try:
        completion = Completion(server, rows, body.stops)
    except BaseException:
        server.free_place()
        raise
    done = once(completion.cancel, server.free_place)
    if body.stream:
        return EventStream(streamed(completion, reply, body, prompts), done)
    try:
        await until_complete(completion, request)
        return reply.whole(completion.texts, completion.reasons, completion.counts(prompts))
    finally:
        done()


class EventStream(StreamingResponse):
    """Server-sent events; ``done`` runs when the response ends, however it ends (a client that left included)."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[str], done: Callable[[], None]):
        super().__init__(events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.done = done

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.done()


def once(*actions: Callable[[], None]) -> Callable[[], None]:
    """A function that runs ``actions`` the first time it is called, and does nothing after."""
    pending = list(actions)

    def run() -> None:
        while pending:
            pending.pop(0)()

    return run


async def streamed(completion: Completion, reply: Reply, body: Sampling, prompts: list[list[int]]
                   ) -> AsyncIterator[str]:
    """The chunks of a streamed response, then ``data: [DONE]``."""
    if reply.chat:
        for i in range(len(completion.rows)):
            yield reply.chunk(i, None, first=True)
    try:
        async for i, piece, reason in completion.pieces():
            if piece or reason:
                yield reply.chunk(i, piece if piece or not reply.chat else None, reason)
    except ApiError as error:
        yield event(error.body())
    if body.include_usage:
        yield reply.usage_chunk(completion.counts(prompts))
    yield event("[DONE]")


async def until_complete(completion: Completion, request: Request) -> None:
    """Wait for every row of a request that is not streamed, checking once a second that its client is still
    there."""
    async def drain() -> None:
        async for _ in completion.pieces():
            pass

    task = asyncio.ensure_future(drain())
    while not task.done():
        await asyncio.wait([task], timeout=1.0)
        if not task.done() and await request.is_disconnected():
            task.cancel()
            raise ApiError(499, "the client closed the request")
    task.result()


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused past ``limit`` bytes without reading the rest."""
    too_large = ApiError(400, f"the request body is larger than this server's limit of {limit} bytes")
    if int(request.headers.get("content-length") or 0) > limit:
        raise too_large
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return body


def key_checker(api_key: str | None):
    """A dependency of every route: the API key as ``Authorization: Bearer <key>`` (or, for the page, which a
    browser opens by its address, ``/?key=<key>``)."""

    async def check(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if request.url.path == "/" and not given:
            given = request.query_params.get("key", "")
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise ApiError(401, "a valid API key is required: send the header Authorization: Bearer <key> (the page: "
                                "open /?key=<key>)", kind="authentication_error", code="invalid_api_key")

    return check
