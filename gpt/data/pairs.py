"""Comparison data: a JSONL file of ``{"prompt": ..., "chosen": ..., "rejected": ...}``, one per line, for the
preference objectives (``lm=dpo``). Each completion is followed by the end token. A batch of B pairs holds 2B
sequences, the chosen ones first: ``input_ids``, ``attention_mask``, and ``labels`` on the completion and its end
token only (the prompt is given, not scored). The validation pairs' prompts, with their chosen completions as the
answers, are checked by generation where they can be (``held_out_answers``)."""

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from gpt import UserError
from gpt.data.answers import AnswerCollate, AnswersDataModule, checked_texts, prepare_jsonl, read_jsonl
from gpt.data.examples import Examples, LengthGroupedSampler
from gpt.data.store import PreparedData, prepared_name

Pair = tuple[str, str, str]  # (prompt, chosen, rejected)


class Pairs(Dataset):
    """Pairs ``start`` to ``stop`` of a prepared directory whose examples are chosen, rejected, chosen, ...: item
    ``i`` is (``i``, chosen tokens, rejected tokens); ``lengths`` are the longer of each two."""

    def __init__(self, prepared: PreparedData, start: int, stop: int, block_size: int):
        self.examples, self.first = Examples(prepared, 2 * start, 2 * stop, block_size), start
        self.lengths = np.maximum(self.examples.lengths[0::2], self.examples.lengths[1::2])

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        return i, self.examples[2 * i][1], self.examples[2 * i + 1][1]


class PairCollate(AnswerCollate):
    """The chosen completions of a batch of pairs, then the rejected ones, padded together; labels on the
    completions only. ``prompt_lengths``: of the examples (two per pair) of one split."""

    def __call__(self, pairs) -> dict[str, torch.Tensor]:
        examples = [(2 * i, chosen) for i, chosen, _ in pairs] + [(2 * i + 1, rejected) for i, _, rejected in pairs]
        return super().__call__(examples)


class PairsDataModule(AnswersDataModule):
    """Comparison pairs of a JSONL file (``text_path``; ``val_path`` or the last ``val_fraction`` of them held
    out), in padded batches of ``batch_size`` pairs; the options of prompt -> answer examples otherwise."""

    def prepared_name(self) -> str:
        return prepared_name(self.text_path, self.tokenizer_kind, self.vocab_size, "pair")

    def prepare(self) -> dict:
        return prepare_pairs(self.text_path, self.data_dir, self.tokenizer_kind, self.vocab_size, self.val_fraction,
                             self.val_path)

    def check(self) -> None:
        data = self.prepared
        too_long = np.flatnonzero(np.diff(data.example_offsets) > self.block_size)
        if too_long.size:
            pair, n_train = int(too_long[0]) // 2, data.n_train_examples // 2
            where = (f"pair {pair + 1} of {self.text_path}" if pair < n_train or not self.val_path
                     else f"pair {pair - n_train + 1} of {self.val_path}")
            raise UserError(f"{too_long.size} completion(s) with their prompt are longer than model.block_size="
                            f"{self.block_size} tokens with their end token, the first in {where}; raise "
                            "model.block_size or shorten them")
        self.check_one_batch(data.n_train_examples // 2)

    def dataset(self, start: int, stop: int) -> Pairs:
        return Pairs(self.prepared, start // 2, stop // 2, self.block_size)

    def collate(self, dataset: Pairs, sampler: LengthGroupedSampler | None) -> PairCollate:
        lengths = self.prepared.prompt_lengths[2 * dataset.first:2 * (dataset.first + len(dataset))]
        return PairCollate(self.tokenizer.pad_id or 0, self.block_size, self.pad_multiple, lengths)

    def held_out_answers(self) -> list[tuple[str, str]]:
        """The prompts and chosen completions of the first ``eval_examples`` validation pairs."""
        data = self.prepared
        last = min(data.n_examples, data.n_train_examples + 2 * self.eval_examples)
        return self.prompts_and_answers(range(data.n_train_examples, last, 2))


# --------------------------------------------------------------------------- the writer


def comparison(line: str, where: str) -> Pair:
    """A line's (prompt, chosen, rejected), each text checked as a prompt -> answer example's are."""
    try:
        item = json.loads(line)
    except json.JSONDecodeError:
        item = None
    if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("prompt", "chosen", "rejected")):
        raise UserError(f"{where} is not a comparison; each line needs {PAIR_SHAPE} with texts")
    prompt, chosen, rejected = checked_texts(item, ("prompt", "chosen", "rejected"), where)
    if chosen == rejected:
        raise UserError(f"{where}: its chosen and rejected completions are the same, which teaches nothing; remove "
                        "the line or give two different completions")
    return prompt, chosen, rejected


def prepare_pairs(text_path: str | Path, out_dir: str | Path, tokenizer: str = "char", vocab_size: int | None = None,
                  val_fraction: float = 0.1, val_path: str | Path | None = None) -> dict:
    """Tokenize the pairs of a JSONL file into examples (chosen, rejected, chosen, ...: prompt, completion, end
    token) with their prompt lengths; the validation split is ``val_path``, or the last ``val_fraction``."""
    return prepare_jsonl(text_path, out_dir, tokenizer, vocab_size, val_fraction, val_path, "comparison pairs",
                         {"example": "pair"},
                         lambda path: read_jsonl(path, comparison, PAIR_SHAPE),
                         lambda pairs: [(prompt, completion) for prompt, chosen, rejected in pairs
                                        for completion in (chosen, rejected)])


PAIR_SHAPE = '{"prompt": ..., "chosen": ..., "rejected": ...}'
