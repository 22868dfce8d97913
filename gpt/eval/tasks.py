"""Evaluation tasks over local files, scored on a causal model from a checkpoint (``eval.py``). Each task is a
config in ``conf/eval/`` that names one of these classes by ``_target_`` and gives its data file:

- ``Perplexity``: bits per UTF-8 byte and perplexity per token of a text (a file, or a directory of ``.txt``
  files), in rolling windows over the model's context;
- ``MultipleChoice``: JSONL of ``{"context", "choices", "label"}``, scored as lm-evaluation-harness scores
  HellaSwag: ``acc`` picks the choice of the highest summed log-probability, ``acc_norm`` the highest per byte;
- ``Answers``: JSONL of ``{"prompt", "answer"}``: the exact match of greedy answers (``gpt.eval.exact_match``).

A task reads its file when it is scored; ``fits(tokenizer)`` says whether a checkpoint's tokenizer can write it.
``EvalTasks`` scores chosen tasks at each validation of a training run (``callbacks.eval_tasks.tasks=[...]``).
"""

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from gpt import IGNORE_INDEX, UserError
from gpt.data.text import read_chunks, text_files
from gpt.data.tokenizers import Tokenizer, text_bytes_per_token
from gpt.eval import TASK_METRICS, TASKS_DIR, declare_task_metrics
from gpt.eval.exact_match import score_answers
from gpt.models.interface import TokenModel, bits_and_bytes, cross_entropy
from gpt.training.checkpoint import model_from_checkpoint

ROLLING_STRIDE = 0.5  # a rolling window moves by half the context: every token but the first ones sees half of it
REPO = TASKS_DIR.parents[1]


def causal_model_from_checkpoint(path: str | Path, scorer: str) -> tuple[TokenModel, Tokenizer]:
    """(model in eval mode, tokenizer) of a checkpoint, refused when it is a masked LM: ``scorer`` (what scores it)
    needs a causal LM's next-token predictions."""
    model, tokenizer, _ = model_from_checkpoint(path)
    if not getattr(model.config, "causal", True):
        raise UserError(f"{path} is a masked LM: {scorer} score a causal LM's next-token predictions; give a causal "
                        "checkpoint (sample.py fills a masked LM's [MASK]s)")
    return model, tokenizer


def load_task(name: str) -> "Task":
    """The task of ``conf/eval/<name>.yaml``; its path is relative to the repository."""
    config = OmegaConf.load(TASKS_DIR / f"{name}.yaml")
    return instantiate(config, path=str(REPO / config.path), name=name)


@dataclass
class Task:
    path: str
    name: str = ""

    # what score() returns that is a metric, and which way is better (the rest are counts)
    metrics: ClassVar[dict[str, str]] = {}

    @cached_property
    def text(self) -> str:
        """The task's file, or the ``*.txt`` files of its directory one after the other (read once: a training run
        scores it at every validation)."""
        if not Path(self.path).exists():
            raise UserError(f"task {self.name}: its data file {self.path} does not exist; put it there (data/eval/"
                            "build.py makes the shipped ones) or give another path")
        return "".join(chunk for path in text_files(Path(self.path)) for chunk in read_chunks(path))

    def fits(self, tokenizer: Tokenizer) -> bool:
        """Whether ``tokenizer`` can write the task's text (a char tokenizer knows only its training characters)."""
        try:
            tokenizer.encode(self.text)
        except UserError:
            return False
        return True

    def json_lines(self) -> Iterator[tuple[str, object]]:
        """(where, its value) for each non-blank line of the task's JSONL file; a line that is not JSON is refused."""
        for number, line in enumerate(self.text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{self.path} line {number}"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"task {self.name}: {where} is not JSON ({e.msg})") from None
            yield where, value

    def score(self, model, tokenizer: Tokenizer, batch_size: int) -> dict[str, float]:
        raise NotImplementedError

    def encode(self, tokenizer: Tokenizer, text: str, where: str) -> list[int]:
        try:
            return tokenizer.encode(text)
        except UserError as e:
            raise UserError(f"task {self.name}: {where}: {e}") from None


@dataclass
class Perplexity(Task):
    """Bits per byte (``bpb``), nats per token (``loss``) and perplexity per token (``ppl``) of a text. Windows of
    the model's context move by half of it; each token is predicted once, from the window where it is in the
    second half (the first window predicts all of its tokens). Special tokens count in neither sum."""

    metrics: ClassVar[dict[str, str]] = TASK_METRICS["Perplexity"]

    def score(self, model, tokenizer: Tokenizer, batch_size: int) -> dict[str, float]:
        ids = self.encode(tokenizer, self.text, self.path)
        if len(ids) < 2:
            raise UserError(f"task {self.name}: {self.path} has fewer than two tokens; give a longer text")
        byte_counts = torch.tensor(text_bytes_per_token(tokenizer))
        windows = rolling_windows(len(ids), model.block_size, max(1, int(model.block_size * ROLLING_STRIDE)))
        nats = bits_bytes = 0.0
        n_tokens = n_bytes = 0
        device = next(model.parameters()).device
        for start in range(0, len(windows), batch_size):
            chunk = windows[start:start + batch_size]
            width = max(end - begin for begin, end, _ in chunk)
            inputs = torch.zeros(len(chunk), width, dtype=torch.long)
            labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
            for row, (begin, end, scored_from) in enumerate(chunk):
                inputs[row, :end - begin] = torch.tensor(ids[begin:end])
                targets = torch.tensor(ids[scored_from + 1:end + 1])
                labels[row, scored_from - begin:end - begin] = targets
            with torch.no_grad():
                logits = model(inputs.to(device)).float().cpu()
            counted = int((labels != IGNORE_INDEX).sum())
            nats += float(cross_entropy(logits, labels)) * counted
            n_tokens += counted
            bits, text_bytes = bits_and_bytes(logits, labels, byte_counts)
            bits_bytes, n_bytes = bits_bytes + float(bits), n_bytes + int(text_bytes)
        return {"bpb": bits_bytes / max(n_bytes, 1), "loss": nats / n_tokens, "ppl": math.exp(nats / n_tokens),
                "tokens": n_tokens}


def rolling_windows(n_tokens: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows ``(begin, end, scored_from)`` over ``n_tokens`` tokens: the inputs are tokens ``begin:end``, and
    the targets after position ``scored_from`` (tokens ``scored_from + 1`` to ``end``) are scored; together they
    score tokens 1 to ``n_tokens - 1`` once each."""
    windows, scored = [], 0
    while scored < n_tokens - 1:
        end = min(scored + (block_size if not windows else stride), n_tokens - 1)
        begin = max(0, end - block_size)
        windows.append((begin, end, scored))
        scored = end
    return windows


@dataclass
class MultipleChoice(Task):
    """``acc``: the share of items whose labelled choice has the highest summed log-probability after the context;
    ``acc_norm``: the same with each sum divided by the choice's length in UTF-8 bytes (lm-evaluation-harness's
    HellaSwag scoring). A context and choice longer than the model's context lose the context's start (and a choice
    longer than the context its first tokens, which are then not scored)."""

    metrics: ClassVar[dict[str, str]] = TASK_METRICS["MultipleChoice"]

    @cached_property
    def items(self) -> list[dict]:
        items = []
        for where, item in self.json_lines():
            item = item if isinstance(item, dict) else {}
            choices, label = item.get("choices"), item.get("label")
            if not isinstance(item.get("context"), str) or not item["context"] or not isinstance(choices, list) \
                    or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
                raise UserError(f'task {self.name}: {where} needs "context" and "choices" (two or more), non-empty '
                                'texts')
            if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(choices):
                raise UserError(f'task {self.name}: {where}: "label" must be the index of the right choice, 0 to '
                                f"{len(choices) - 1}, got {label!r}")
            items.append({"context": item["context"], "choices": choices, "label": label, "where": where})
        if not items:
            raise UserError(f"task {self.name}: {self.path} holds no items")
        return items

    def fits(self, tokenizer: Tokenizer) -> bool:
        try:
            for item in self.items:
                tokenizer.encode(item["context"] + "".join(item["choices"]))
        except UserError:
            return False
        return True

    def score(self, model, tokenizer: Tokenizer, batch_size: int) -> dict[str, float]:
        items = self.items
        requests = [(i, self.encode(tokenizer, item["context"], item["where"]),
                     self.encode(tokenizer, choice, item["where"]))
                    for i, item in enumerate(items) for choice in item["choices"]]
        logprobs = [logprob for logprob, _ in
                    continuation_logprobs(model, [(context, choice) for _, context, choice in requests], batch_size)]
        by_item: dict[int, list[float]] = {}
        for (i, _, _), logprob in zip(requests, logprobs):
            by_item.setdefault(i, []).append(logprob)
        acc = acc_norm = 0
        for i, item in enumerate(items):
            sums = by_item[i]
            per_byte = [s / len(c.encode("utf-8")) for s, c in zip(sums, item["choices"])]
            acc += max(range(len(sums)), key=sums.__getitem__) == item["label"]
            acc_norm += max(range(len(per_byte)), key=per_byte.__getitem__) == item["label"]
        return {"acc": acc / len(items), "acc_norm": acc_norm / len(items), "items": len(items)}


def continuation_logprobs(model, requests: list[tuple[list[int], list[int]]], batch_size: int
                          ) -> list[tuple[float, bool]]:
    """For each (context, continuation) of token ids: the summed log-probability of the continuation's tokens after
    the context, and whether greedy decoding gives those tokens; in batches of similar lengths, the log-softmax
    taken only where a token is scored. A pair longer than the model's context (plus one) loses the context's start,
    and a continuation longer than the context its first tokens, which are then not scored (lm-evaluation-harness's
    truncation)."""
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]) - len(requests[i][1]))
    device = next(model.parameters()).device
    results = [(0.0, True)] * len(requests)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        rows = [(requests[i][0] + requests[i][1])[-(model.block_size + 1):] for i in chunk]
        width = max(len(row) for row in rows) - 1
        inputs = torch.zeros(len(rows), width, dtype=torch.long)
        for r, row in enumerate(rows):
            inputs[r, :len(row) - 1] = torch.tensor(row[:-1])
        with torch.no_grad():
            logits = model(inputs.to(device))
        for r, (i, row) in enumerate(zip(chunk, rows)):
            n = min(len(requests[i][1]), len(row) - 1)
            logprobs = torch.log_softmax(logits[r, len(row) - 1 - n:len(row) - 1].float(), dim=-1).cpu()
            targets = torch.tensor(row[len(row) - n:], dtype=torch.long)
            results[i] = (float(logprobs[torch.arange(n), targets].sum()),
                          bool((logprobs.argmax(dim=-1) == targets).all()))
    return results


@dataclass
class Answers(Task):
    """``exact_match`` and ``digit_acc`` of the greedy answers to JSONL prompts (``{"prompt", "answer"}``), as
    training validates them: an answer counts when it equals the reference and then ends."""

    metrics: ClassVar[dict[str, str]] = TASK_METRICS["Answers"]

    @cached_property
    def pairs(self) -> list[tuple[str, str]]:
        pairs = []
        for where, item in self.json_lines():
            if not isinstance(item, dict) or not all(isinstance(item.get(k), str) and item[k]
                                                     for k in ("prompt", "answer")):
                raise UserError(f'task {self.name}: {where} needs "prompt" and "answer", non-empty texts')
            pairs.append((item["prompt"], item["answer"]))
        return pairs

    def fits(self, tokenizer: Tokenizer) -> bool:
        if tokenizer.eot_id is None:
            return False
        try:
            for prompt, answer in self.pairs:
                tokenizer.encode(prompt + answer)
        except UserError:
            return False
        return True

    def score(self, model, tokenizer: Tokenizer, batch_size: int) -> dict[str, float]:
        if tokenizer.eot_id is None:
            raise UserError(f"task {self.name}: the checkpoint's tokenizer has no end token, so its answers never end")
        pairs = self.pairs
        for prompt, answer in pairs:
            self.encode(tokenizer, prompt + answer, self.path)
        exact, per_character = score_answers(model, tokenizer, pairs)
        return {"exact_match": exact, "digit_acc": per_character, "items": len(pairs)}


class EvalTasks(L.Callback):
    """At each validation, the ``tasks`` of ``conf/eval/`` scored on the model being trained and logged as
    ``eval/<task>/<metric>``. Each metric is declared (``gpt.metrics``), so the checkpoints can keep the best by it
    (``callbacks.checkpoints.monitor=eval/comus_cloze/acc_norm``) and a sweep rank by it."""

    def __init__(self, tasks: list[str] = (), batch_size: int = 32):
        self.tasks, self.batch_size = {name: load_task(name) for name in tasks}, batch_size
        for name, task in self.tasks.items():
            declare_task_metrics(name, task.metrics)

    def setup(self, trainer, pl_module, stage: str) -> None:
        tokenizer = trainer.datamodule.tokenizer
        if unfit := [name for name, task in self.tasks.items() if not task.fits(tokenizer)]:
            raise UserError(f"callbacks.eval_tasks: task {unfit[0]} cannot be written with this data's "
                            f"{tokenizer.kind} tokenizer of {tokenizer.vocab_size} tokens; choose tasks in its "
                            "characters")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        for name, task in self.tasks.items():
            scores = task.score(pl_module.model, trainer.datamodule.tokenizer, self.batch_size)
            for key in task.metrics:
                # every rank scores the same files: the values agree, the sync only keeps Lightning content
                pl_module.log(f"eval/{name}/{key}", scores[key], sync_dist=True)
