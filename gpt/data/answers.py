"""Prompt -> answer examples of a JSONL file, one ``{"prompt": ..., "answer": ...}`` object per line, in padded,
length-bucketed batches (the examples pipeline of ``gpt.data.examples``), trained with the loss on the answer and
its end token only: the format of ``data=jsonl``, and the base of ``data=arithmetic``. Its held-out answers are
checked by generation (``gpt.eval.exact_match``)."""

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from gpt import IGNORE_INDEX, UserError
from gpt.data.bpe import DEFAULT_SPECIAL_TOKENS, ENDOFTEXT
from gpt.data.examples import Examples, ExamplesDataModule, LengthGroupedSampler, PadCollate
from gpt.data.store import PreparedData, check_val_fraction, fit, prepare, prepared_name, token_dtype
from gpt.data.tokenizers import Tokenizer

log = logging.getLogger(__name__)
T = TypeVar("T")


class AnswerCollate(PadCollate):
    """Padded batches whose labels are the answer's tokens and its end token only: the prompt is given, not
    learned. ``prompt_lengths``: of the examples of one dataset, by their index in it."""

    def __init__(self, pad_id: int, block_size: int, pad_multiple: int, prompt_lengths: np.ndarray):
        super().__init__(pad_id, block_size, pad_multiple)
        self.prompt_lengths = prompt_lengths

    def __call__(self, examples) -> dict[str, torch.Tensor]:
        batch = super().__call__(examples)
        prompt_lengths = torch.tensor([int(self.prompt_lengths[index]) for index, _ in examples])
        in_prompt = torch.arange(batch["labels"].size(1))[None] < prompt_lengths[:, None] - 1
        batch["labels"] = batch["labels"].masked_fill(in_prompt, IGNORE_INDEX)  # a position predicts the next token
        return batch


class AnswersDataModule(ExamplesDataModule):
    """Prompt -> answer examples of a JSONL file; the first ``eval_examples`` of the validation split are checked
    by generating their answers.

    - ``text_path``: the JSONL file (its lines are the examples: ``data.example`` stays ``line``);
    - ``val_path``: a JSONL file of validation examples (null: the last ``val_fraction`` of ``text_path``'s);
    - ``eval_examples``: how many validation examples have their generated answer checked;
    - and the options of whole examples but masking (``gpt.data.examples.ExamplesDataModule``)."""

    def __init__(self, *, text_path: str, val_path: str | None = None, eval_examples: int = 1000,
                 example: str = "line", pad_multiple: int = 8, mlm_probability: float | None = None, **options):
        if example != "line":
            raise UserError(f"data.example={example}: the examples of a JSONL file are its lines")
        if mlm_probability is not None:
            raise UserError("data.mlm_probability: prompt -> answer examples train a causal LM, whose loss is on the "
                            "answer; leave it null")
        super().__init__(text_path=text_path, example="answer", pad_multiple=pad_multiple, **options)
        self.val_path, self.eval_examples = val_path, eval_examples

    def prepared_name(self) -> str:
        return prepared_name(self.text_path, self.tokenizer_kind, self.vocab_size, "answer")

    def prepare(self) -> dict:
        return prepare_answers(self.text_path, self.data_dir, self.tokenizer_kind, self.vocab_size, self.val_fraction,
                               self.val_path)

    def check(self) -> None:
        data = self.prepared
        lengths = np.diff(data.example_offsets)
        too_long = np.flatnonzero(lengths > self.block_size)
        if too_long.size:
            first = int(too_long[0])
            where = (f"example {first + 1} of {self.text_path}" if first < data.n_train_examples or not self.val_path
                     else f"example {first - data.n_train_examples + 1} of {self.val_path}")
            raise UserError(f"{too_long.size} example(s) are longer than model.block_size={self.block_size} tokens "
                            f"with their end token, the first {where} ({lengths[first]} tokens); raise "
                            "model.block_size or shorten them")
        self.check_one_batch(data.n_train_examples)

    def collate(self, dataset: Examples, sampler: LengthGroupedSampler | None) -> PadCollate:
        lengths = self.prepared.prompt_lengths[dataset.first:dataset.first + len(dataset)]
        return AnswerCollate(self.tokenizer.pad_id or 0, self.block_size, self.pad_multiple, lengths)

    def held_out_answers(self) -> list[tuple[str, str]]:
        """The first ``eval_examples`` examples of the validation split as (prompt, answer) texts."""
        data = self.prepared
        return self.prompts_and_answers(range(data.n_train_examples,
                                              min(data.n_examples, data.n_train_examples + self.eval_examples)))

    def prompts_and_answers(self, indices: range) -> list[tuple[str, str]]:
        """The examples of ``indices`` as (prompt, answer) texts, without their end token."""
        data, tok = self.prepared, self.tokenizer
        tokens, offsets = data.example_tokens().tokens, data.example_offsets
        pairs = []
        for i in indices:
            example, prompt_length = tokens[offsets[i]:offsets[i + 1]].tolist(), int(data.prompt_lengths[i])
            pairs.append((tok.decode(example[:prompt_length]), tok.decode(example[prompt_length:-1])))
        return pairs


# --------------------------------------------------------------------------- the writer: examples with prompt lengths


def read_jsonl(path: Path, parse: Callable[[str, str], T], shape: str) -> list[T]:
    """The items of a JSONL file, one per line (blank lines are skipped), each made by ``parse(line, where)``,
    which refuses a line that is not one by its number; ``shape``: what a line holds, for the messages."""
    items = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    items.append(parse(line, f"{path}:{number}"))
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; convert it with iconv -t utf-8") from None
    if not items:
        raise UserError(f"{path} has no examples; write one {shape} object per line")
    return items


ANSWER_SHAPE = '{"prompt": ..., "answer": ...}'


def answer_pair(line: str, where: str) -> tuple[str, str]:
    try:
        item = json.loads(line)
    except json.JSONDecodeError:
        item = None
    if not isinstance(item, dict):
        raise UserError(f"{where} is not a JSON object; write one {ANSWER_SHAPE} per line")
    for key in ("prompt", "answer"):
        if not isinstance(item.get(key), str):
            raise UserError(f"{where} has no text under {key!r}; each line needs {ANSWER_SHAPE}")
    return checked_texts(item, ("prompt", "answer"), where)


def checked_texts(item: dict, keys: tuple[str, ...], where: str) -> tuple[str, ...]:
    """The texts of a JSONL line's ``keys``, refused by ``where`` when one is empty or holds a special token."""
    if empty := next((key for key in keys if not item[key]), None):
        raise UserError(f"{where} has an empty {empty}; every example needs a prompt to answer and an answer to learn")
    for key in keys:
        if token := next((t for t in DEFAULT_SPECIAL_TOKENS if t in item[key]), None):
            raise UserError(f"{where} has {token} in its {key}, which the tokenizers read as a special token, not as "
                            f"text ({ENDOFTEXT} ends every answer); remove it")
    return tuple(item[key] for key in keys)


def prepare_answers(text_path: str | Path, out_dir: str | Path, tokenizer: str = "char", vocab_size: int | None = None,
                    val_fraction: float = 0.1, val_path: str | Path | None = None) -> dict:
    """Tokenize the prompt -> answer examples of a JSONL file into ``tokens.bin`` + ``offsets.npy`` +
    ``prompt_lengths.npy``: each example is its prompt, its answer and the end token. The validation split is
    ``val_path``, or else the last ``val_fraction`` of the examples."""
    return prepare_jsonl(text_path, out_dir, tokenizer, vocab_size, val_fraction, val_path, "prompts and answers",
                         {"answers": True}, lambda path: read_jsonl(path, answer_pair, ANSWER_SHAPE), list)


def prepare_jsonl(text_path: str | Path, out_dir: str | Path, tokenizer: str, vocab_size: int | None,
                  val_fraction: float, val_path: str | Path | None, what: str, option: dict,
                  read: Callable[[Path], list[T]], completions: Callable[[list[T]], list[tuple[str, str]]]) -> dict:
    """Prepare the items of a JSONL file (``read``; ``what`` they are, for the messages) as (prompt, completion)
    examples (``completions`` of the items) with their prompt lengths; the validation items are those of
    ``val_path``, or the last ``val_fraction``. ``option`` tells this kind of item's prepared directories apart."""
    files = [Path(text_path), *([Path(val_path)] if val_path else [])]
    for path in files:
        if not path.is_file():
            problem = "is a directory" if path.is_dir() else "not found"
            raise UserError(f"data file {problem}: {path}; set data.text_path to a JSONL file of {what}")
    if not val_path:
        check_val_fraction(val_fraction)

    def build(out: Path) -> tuple[Tokenizer, dict]:
        train = read(files[0])
        if len(files) > 1:
            val = read(files[1])
        else:
            n_train = int(len(train) * (1 - val_fraction))
            if not 0 < n_train < len(train):
                raise UserError(f"{files[0]} has only {len(train)} example(s), too few for a train and a val split")
            train, val = train[:n_train], train[n_train:]
        log.info("preparing %d train and %d val %s in %s", len(train), len(val), what, out)
        return write_completions(completions(train), completions(val), out, tokenizer, vocab_size)

    options = {"tokenizer": tokenizer, "vocab_size": vocab_size, "val_fraction": val_fraction, **option}
    return prepare(Path(out_dir), files, options, build)


def write_completions(train: list[tuple[str, str]], val: list[tuple[str, str]], out_dir: Path, kind: str,
                      vocab_size: int | None) -> tuple[Tokenizer, dict]:
    """Fit the tokenizer on the training examples and write every (prompt, completion) example: its prompt, its
    completion and the end token."""
    tok = fit(kind, lambda: (prompt + completion + "\n" for prompt, completion in train),
              lambda: (prompt + completion for prompt, completion in train + val), vocab_size)
    if tok.eot_id is None:
        raise UserError(f"the {tok.kind} tokenizer has no end token, which completions need")
    prompts = [tok.encode(prompt) for prompt, _ in train + val]
    completions = [tok.encode(completion) + [tok.eot_id] for _, completion in train + val]
    data = PreparedData(out_dir)
    offsets = data.write_examples((p + c for p, c in zip(prompts, completions)), token_dtype(tok.vocab_size))
    data.write_array(data.prompt_lengths_path, np.array([len(prompt) for prompt in prompts]))
    return tok, {"examples": len(prompts), "train_examples": len(train), "skipped_empty": 0,
                 "tokens": int(offsets[-1])}
