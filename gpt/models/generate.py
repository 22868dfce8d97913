"""Generation: the settings (``GenerationSettings``), autoregressive sampling for any
``gpt.models.interface.TokenModel``, and mask filling for a masked LM.

Generation always runs the model eagerly (``torch.compiler.set_stance("force_eager")``), also where the training
step is compiled: every new token has another sequence length, and compiling for each would cost more than it saves.
"""

from collections.abc import Collection, Iterator
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class GenerationSettings:
    """How to generate, in one object (as transformers' ``GenerationConfig``): ``sample.py``, the text samples of a
    run, exact match and the server build one and pass it to ``generate`` or ``stream``.

    - ``max_new_tokens``: at most this many tokens after the prompt;
    - ``temperature``: 0 is greedy; ``top_k``: sample among the k likeliest; ``top_p``: among the fewest whose
      probability reaches p (nucleus);
    - ``stop_ids``: a row ends once it has generated one of them (included in its output);
    - ``suppress_ids``: never generated;
    - ``use_cache``: keep a KV cache (the tokens are the same without it, only slower)."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    stop_ids: frozenset[int] = frozenset()
    suppress_ids: frozenset[int] = frozenset()
    use_cache: bool = True

    @classmethod
    def for_tokenizer(cls, tokenizer, **options) -> "GenerationSettings":
        """Settings that stop at the tokenizer's end token and never generate its other special tokens ([PAD],
        [MASK]: they are not text)."""
        end = {tokenizer.eot_id} - {None}
        return cls(stop_ids=frozenset(end), suppress_ids=frozenset(tokenizer.special_ids - end), **options)


class GenerationMixin:
    """Autoregressive sampling for a model mapping token ids (B, T) to logits (B, T, V).

    Prompts of different lengths go in one batch, left-padded, with an attention mask; each prompt gets the
    tokens it would get alone. Each new token is predicted from the last ``block_size`` tokens of its sequence.
    Models whose ``new_cache`` gives a KV cache keep one while the sequence fits the context, so that each new
    token costs one step. Past ``block_size`` tokens the window slides, which changes every cached key and value:
    each new token is then computed afresh from the last ``block_size`` tokens. The cache therefore never changes
    the tokens, only the speed up to ``block_size``. Only the last ``block_size`` tokens stay on the device: memory
    does not grow with the number of new tokens."""

    @torch.no_grad()
    @torch.compiler.set_stance("force_eager")
    def stream(self, prompts: list[list[int]] | torch.Tensor, settings: GenerationSettings) -> Iterator[list[int]]:
        """The next token of every prompt, one list per step, as they are generated; it ends after
        ``settings.max_new_tokens`` steps, or once every row has generated a stop token (a row that has goes on
        being sampled until then: its later tokens mean nothing)."""
        idx, mask = left_pad(prompts, next(self.parameters()).device)
        length = idx.size(1)  # columns so far, padding included; idx and mask keep the last block_size of them
        # room for the tokens that will be fed while the sequence fits the context: no more
        cache = (self.new_cache(idx.size(0), min(self.block_size, length + settings.max_new_tokens))
                 if settings.use_cache else None)
        padded = not bool(mask.all())  # without padding, attention needs no mask tensor
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        suppressed = torch.tensor(sorted(settings.suppress_ids), dtype=torch.long, device=idx.device)
        stops = torch.tensor(sorted(settings.stop_ids), dtype=torch.long, device=idx.device)
        for _ in range(settings.max_new_tokens):
            if cache is not None and length <= self.block_size:
                new = idx if cache.length == 0 else idx[:, -1:]  # the cache holds every column before the last
                logits = self(new, attention_mask=mask if padded else None, cache=cache)
            else:
                logits = self(idx[:, -self.block_size:], attention_mask=mask[:, -self.block_size:] if padded else None)
            next_logits = logits[:, -1]
            if len(suppressed):
                next_logits = next_logits.index_fill(-1, suppressed, float("-inf"))
            next_id = sample_next(next_logits, settings.temperature, settings.top_k, settings.top_p)
            idx, mask = torch.cat([idx, next_id], dim=1)[:, -self.block_size:], \
                F.pad(mask, (0, 1), value=True)[:, -self.block_size:]
            length += 1
            yield next_id[:, 0].tolist()
            if len(stops):
                finished |= torch.isin(next_id[:, 0], stops)
                if finished.all():
                    return

    def generate(self, prompts: list[list[int]] | torch.Tensor, settings: GenerationSettings) -> list[list[int]]:
        """Each prompt followed by its new tokens, up to and including a stop token when one comes: ``stream``,
        collected."""
        rows = prompts.tolist() if isinstance(prompts, torch.Tensor) else [list(prompt) for prompt in prompts]
        ended = [False] * len(rows)
        for tokens in self.stream(prompts, settings):
            for row, token in enumerate(tokens):
                if not ended[row]:
                    rows[row].append(token)
                    ended[row] = token in settings.stop_ids
        return rows


def generated_answer(row: list[int], prompt_length: int, tokenizer) -> str | None:
    """The answer of a generated row (its tokens after the prompt) when it ended with the end token, else None:
    an answer that does not end is never right."""
    generated = row[prompt_length:]
    return tokenizer.decode(generated[:-1]) if generated and generated[-1] == tokenizer.eot_id else None


def left_pad(prompts: list[list[int]] | torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of shape (B, longest prompt), prompts aligned to the right."""
    if isinstance(prompts, torch.Tensor):
        return prompts.to(device), torch.ones_like(prompts, dtype=torch.bool, device=device)
    if not prompts or min(len(p) for p in prompts) == 0:
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    idx = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        idx[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = True
    return idx.to(device), mask.to(device)


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of ``logits`` (B, V); temperature 0 means greedy. ``generator``: the random numbers'
    source (torch's global one by default)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        before = sorted_logits.softmax(dim=-1).cumsum(dim=-1) - sorted_logits.softmax(dim=-1)
        drop = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, before > top_p)
        logits = logits.masked_fill(drop, float("-inf"))  # keep the smallest set whose mass reaches top_p
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=generator)


@torch.no_grad()
@torch.compiler.set_stance("force_eager")
def fill_masks(model, ids: list[int], mask_id: int, special_ids: Collection[int],
               top_k: int) -> tuple[list[int], list[list[tuple[int, float]]]]:
    """Predict every ``mask_id`` of ``ids`` at once with a masked LM: (``ids`` with each mask replaced by its
    most likely token, and for each mask its ``top_k`` candidates as (token id, probability)). Special
    tokens are never candidates."""
    device = next(model.parameters()).device
    logits = model(torch.tensor([ids], device=device))[0].float()
    logits[:, list(special_ids)] = float("-inf")
    positions = [i for i, token in enumerate(ids) if token == mask_id]
    probs, candidates = logits[positions].softmax(dim=-1).topk(min(top_k, model.vocab_size - len(special_ids)), dim=-1)
    filled = list(ids)
    for position, best in zip(positions, candidates[:, 0].tolist()):
        filled[position] = best
    return filled, [list(zip(c, p)) for c, p in zip(candidates.tolist(), probs.tolist())]
