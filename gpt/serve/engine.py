"""Continuous batching: every request that is generating is a row of one batch, which advances a token per step;
a request that arrives while the batch runs joins it at the next step, and a row that ends (or whose client left)
leaves it at once.

Rows are aligned to the right (left padding with an attention mask), as in ``gpt.models.generate``: a joining
group is first run alone over its prompts (its prefill, which gives its first tokens), then its rows, their KV cache
included, are padded on the left to the batch's width and stacked under it. A key or value depends only on its
token and position, and positions are counted over each row's own tokens, so a row's logits are those it would get
alone (exactly so on a CPU in float32, where it is tested; elsewhere up to the rounding of other kernels): greedy
generation gives the same text alone or in any batch. Past ``block_size`` columns (padding included)
the batch computes each step afresh from its last ``block_size`` columns, as ``GenerationMixin.stream`` does past
the context; it keeps a cache again once leaving rows have shortened it.
"""

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from gpt.models.generate import GenerationSettings, left_pad, sample_next
from gpt.models.interface import TokenModel


@dataclass(eq=False)
class Request:
    """One sequence to generate, and where its tokens go. Of its ``settings``, the row's own are
    ``max_new_tokens``, ``temperature``, ``top_k`` and ``top_p``; the stop and suppressed tokens and the cache are
    the engine's, for every row. ``on_token(token)`` and ``on_end(reason, error)`` are called on the engine's
    thread; ``reason`` is ``stop`` (an end token), ``length`` (``max_new_tokens``) or ``error``. Setting
    ``cancelled`` (a client that left, a stop text) makes its row leave at the next step."""

    prompt: list[int]
    settings: GenerationSettings
    on_token: Callable[[int], None]
    on_end: Callable[[str, str | None], None]
    generator: torch.Generator | None = None  # a seeded request samples from its own generator
    cancelled: bool = False
    generated: int = 0
    ended: bool = False

    def end(self, reason: str, error: str | None = None) -> None:
        if not self.ended and not self.cancelled:
            self.ended = True
            try:
                self.on_end(reason, error)
            except RuntimeError:  # its event loop has closed (a forced shutdown): nobody waits for it
                pass


class Batch:
    """The rows being generated: token ids and attention mask (B, columns), the KV cache of every column but the
    last (or None), and the request of each row."""

    def __init__(self, model: TokenModel, requests: list[Request], suppress_ids: torch.Tensor, use_cache: bool):
        self.model, self.requests, self.suppress_ids, self.use_cache = model, requests, suppress_ids, use_cache
        device = next(model.parameters()).device
        self.idx, self.mask = left_pad([r.prompt[-model.block_size:] for r in requests], device)
        self.cache = None

    @property
    def width(self) -> int:
        return self.idx.size(1)

    @torch.no_grad()
    @torch.compiler.set_stance("force_eager")
    def step(self) -> list[int]:
        """The next token of every row, appended to it."""
        block, padded = self.model.block_size, not bool(self.mask.all())
        mask = self.mask if padded else None
        if self.use_cache and self.width <= block:
            if self.cache is None:  # the whole batch at once: its prompts (prefill), or a batch that fits again
                self.cache = self.model.new_cache(len(self.requests), min(block, self.width + self.room()))
                logits = self.model(self.idx, attention_mask=mask, cache=self.cache)
            else:
                self.reserve(1)
                logits = self.model(self.idx[:, -1:], attention_mask=mask, cache=self.cache)
        else:
            self.cache = None
            logits = self.model(self.idx[:, -block:], attention_mask=None if mask is None else mask[:, -block:])
        next_ids = self.sample(logits[:, -1].float())
        self.idx = torch.cat([self.idx, next_ids[:, None]], dim=1)
        self.mask = F.pad(self.mask, (0, 1), value=True)
        return next_ids.tolist()

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """One token per row, each with its request's own settings and generator."""
        if len(self.suppress_ids):
            logits = logits.index_fill(-1, self.suppress_ids, float("-inf"))
        return torch.cat([sample_next(logits[i:i + 1], r.settings.temperature, r.settings.top_k, r.settings.top_p,
                                      r.generator)[0] for i, r in enumerate(self.requests)])

    def room(self) -> int:
        """Cache slots the rows may still need."""
        return max(r.settings.max_new_tokens - r.generated for r in self.requests)

    def reserve(self, tokens: int) -> None:
        """A cache with room for ``tokens`` more slots, grown (copied) when full."""
        filled, size = self.cache.length, self.cache.k.size(3)
        if filled + tokens > size:
            self.cache = self.moved_cache(range(len(self.requests)), 0, min(self.model.block_size,
                                                                           filled + max(tokens, self.room())))

    def moved_cache(self, rows, shift: int, size: int):
        """A cache of ``size`` slots holding the filled slots of ``rows``, ``shift`` slots further right."""
        moved = self.model.new_cache(len(rows), size)
        filled = self.cache.length
        rows = torch.tensor(list(rows), dtype=torch.long, device=self.idx.device)
        moved.k[:, :, :, shift:shift + filled] = self.cache.k[:, rows, :, :filled]
        moved.v[:, :, :, shift:shift + filled] = self.cache.v[:, rows, :, :filled]
        moved.length = shift + filled
        return moved

    def keep(self, rows: list[int]) -> None:
        """Only these rows stay; columns that are padding in every row left go."""
        if not rows:
            self.requests, self.cache = [], None
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.idx.device)
        self.requests = [self.requests[i] for i in rows]
        self.idx, self.mask = self.idx[index], self.mask[index]
        drop = int(self.mask.float().argmax(dim=1).min())  # leading columns that no row uses
        self.idx, self.mask = self.idx[:, drop:], self.mask[:, drop:]
        if self.cache is not None:
            cache = self.moved_cache(rows, 0, self.cache.k.size(3))
            cache.k, cache.v = cache.k[:, :, :, drop:], cache.v[:, :, :, drop:]
            cache.length -= drop
            self.cache = cache

    def join(self, group: "Batch") -> None:
        """Stack ``group``'s rows under these, both padded on the left to the wider of the two."""
        width = max(self.width, group.width)
        if self.cache is not None and group.cache is not None and width <= self.model.block_size:
            size = min(self.model.block_size, width - 1 + max(self.room(), group.room()))
            upper = self.moved_cache(range(len(self.requests)), width - self.width, size)
            lower = group.moved_cache(range(len(group.requests)), width - group.width, size)
            upper.k, upper.v = torch.cat([upper.k, lower.k], dim=1), torch.cat([upper.v, lower.v], dim=1)
            self.cache = upper
        else:
            self.cache = None  # rebuilt by the next step, from all the columns, once the batch fits the context
        self.idx = torch.cat([F.pad(self.idx, (width - self.width, 0)), F.pad(group.idx, (width - group.width, 0))])
        self.mask = torch.cat([F.pad(self.mask, (width - self.mask.size(1), 0)),
                               F.pad(group.mask, (width - group.mask.size(1), 0))])
        self.requests += group.requests


class Engine:
    """Generates the requests given to ``submit`` on a thread of its own, as one continuous batch of at most
    ``max_batch_size`` rows (the others wait their turn, first come first served). When the batch is empty, the
    first request waits ``batch_wait_s`` for others, so that requests sent together start together. ``settings``:
    the stop and suppressed tokens and the cache of every row (``GenerationSettings.for_tokenizer``), and each
    request's sampling by default."""

    def __init__(self, model: TokenModel, settings: GenerationSettings, max_batch_size: int = 16,
                 batch_wait_s: float = 0.005):
        self.model, self.settings = model, settings
        self.max_batch_size, self.batch_wait_s = max_batch_size, batch_wait_s
        self.suppress_ids = torch.tensor(sorted(settings.suppress_ids), dtype=torch.long,
                                         device=next(model.parameters()).device)
        self.waiting: deque[Request] = deque()
        self.batch: Batch | None = None
        self.wake = threading.Condition()
        self.closing = False
        self.steps = self.tokens = 0  # batch steps taken and tokens generated: tokens / steps is the mean batch
        self.thread = threading.Thread(target=self.run, name="generation", daemon=True)

    def start(self) -> "Engine":
        self.thread.start()
        return self

    def submit(self, requests: list[Request]) -> None:
        with self.wake:
            self.waiting.extend(requests)
            self.wake.notify()

    def close(self) -> None:
        """Stop once the requests given so far have ended."""
        with self.wake:
            self.closing = True
            self.wake.notify()
        self.thread.join()

    @property
    def rows(self) -> int:
        batch = self.batch  # read once: the engine's thread may drop it meanwhile
        return len(batch.requests) if batch else 0

    def run(self) -> None:
        while True:
            with self.wake:
                while not self.waiting and not self.rows and not self.closing:
                    self.wake.wait()
                if self.closing and not self.waiting and not self.rows:
                    return
            if not self.rows:
                time.sleep(self.batch_wait_s)
            try:
                self.admit()
                if self.rows:
                    self.advance(self.batch)
            except Exception as error:  # noqa: BLE001 (the batch fails; the engine goes on with the next requests)
                fail(self.batch.requests if self.batch else [], error)
                self.batch = None

    def admit(self) -> None:
        """The waiting requests that fit join the batch, after a first step of their own."""
        with self.wake:
            count = min(len(self.waiting), self.max_batch_size - self.rows)
            group = [self.waiting.popleft() for _ in range(count)]
        group = [r for r in group if not r.cancelled]
        for request in group:
            if request.settings.max_new_tokens == 0:
                request.end("length")
        group = [r for r in group if r.settings.max_new_tokens > 0]
        if not group:
            return
        try:
            joining = Batch(self.model, group, self.suppress_ids, self.settings.use_cache)
            self.advance(joining)
        except Exception as error:  # noqa: BLE001 (this group fails, the batch goes on)
            fail(group, error)
            return
        if not joining.requests:
            return
        if self.batch is None or not self.batch.requests:
            self.batch = joining
            return
        try:
            self.batch.join(joining)
        except Exception as error:  # noqa: BLE001 (both fail, and the engine goes on with the next requests)
            fail(self.batch.requests + joining.requests, error)
            self.batch = None

    def advance(self, batch: Batch) -> None:
        """One step of ``batch``: each row's token goes to its request; rows that end leave."""
        staying, tokens = [], batch.step()
        self.steps, self.tokens = self.steps + 1, self.tokens + len(tokens)
        for row, (request, token) in enumerate(zip(batch.requests, tokens)):
            if request.cancelled:
                continue
            request.generated += 1
            request.on_token(token)
            if token in self.settings.stop_ids:
                request.end("stop")
            elif request.generated >= request.settings.max_new_tokens:
                request.end("length")
            else:
                staying.append(row)
        if len(staying) < len(batch.requests):
            batch.keep(staying)


def fail(requests: list[Request], error: Exception) -> None:
    for request in requests:
        request.end("error", f"{type(error).__name__}: {error}")
