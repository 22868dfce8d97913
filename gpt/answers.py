"""Tasks with a checkable answer: prompt -> answer examples (from a JSONL file, or generated arithmetic), trained
with the loss on the answer and its end token only, and checked by generating each held-out answer.

- ``AnswersDataModule``: ``{"prompt": ..., "answer": ...}`` per line of a JSONL file, in padded, length-bucketed
  batches (the examples pipeline of ``gpt.examples``);
- ``ArithmeticDataModule``: the same for arithmetic problems generated once into the data cache (``gpt.arithmetic``);
- ``ExactMatch``: at each validation, greedy generation with the KV cache of the answer to each held-out prompt;
  ``val/exact_match`` is the share of answers equal to the reference, ``val/digit_acc`` the share of the reference's
  characters (digits, for arithmetic) generated at their place.
"""

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch

from gpt import IGNORE_INDEX, UserError
from gpt.arithmetic import check_arithmetic, problems, write_jsonl
from gpt.corpus import prepare_answers
from gpt.examples import Examples, ExamplesDataModule, PadCollate


GENERATION_LOGITS_BYTES = 2 ** 30


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
    """Prompt -> answer examples of a JSONL file (``text_path``); the validation split is ``val_path`` or the last
    ``val_fraction`` of the examples, and the first ``eval_examples`` of it are checked by ``ExactMatch``."""

    def __init__(self, text_path: str, cache_dir: str, block_size: int, batch_size: int,
                 val_path: str | None = None, tokenizer: str = "char", vocab_size: int | None = None,
                 val_fraction: float = 0.1, bucketing: bool = True, bucket_batches: int = 50, pad_multiple: int = 8,
                 eval_examples: int = 1000, num_workers: int = 0, seed: int = 1337):
        super().__init__(text_path, cache_dir, block_size, batch_size, "answer", tokenizer, vocab_size, val_fraction,
                         bucketing, bucket_batches, pad_multiple, num_workers=num_workers, seed=seed)
        self.val_path, self.eval_examples = val_path, eval_examples

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

    def collate(self, seed: int | None, dataset: Examples) -> PadCollate:
        lengths = self.prepared.prompt_lengths[dataset.first:dataset.first + len(dataset)]
        return AnswerCollate(self.tokenizer.pad_id or 0, self.block_size, self.pad_multiple, lengths)

    def held_out_answers(self) -> list[tuple[str, str]]:
        """The first ``eval_examples`` examples of the validation split as (prompt, answer) texts."""
        data, tok = self.prepared, self.tokenizer
        tokens, offsets = data.example_tokens().tokens, data.example_offsets
        pairs = []
        for i in range(data.n_train_examples, min(data.n_examples, data.n_train_examples + self.eval_examples)):
            example, prompt_length = tokens[offsets[i]:offsets[i + 1]].tolist(), int(data.prompt_lengths[i])
            pairs.append((tok.decode(example[:prompt_length]), tok.decode(example[prompt_length:-1])))
        return pairs


class ArithmeticDataModule(AnswersDataModule):
    """Arithmetic problems (``gpt.arithmetic``) written once as JSONL into the data cache, then prepared as answers:
    ``train_examples`` for training, ``test_examples`` held out (never in training) for validation."""

    def __init__(self, cache_dir: str, block_size: int, batch_size: int, operation: str = "+", digits: int = 3,
                 format: str = "reversed", zero_pad: bool = True, train_examples: int = 10_000,
                 test_examples: int = 1000, tokenizer: str = "char", vocab_size: int | None = None,
                 bucketing: bool = True, bucket_batches: int = 50, pad_multiple: int = 8, num_workers: int = 0,
                 seed: int = 1337):
        check_arithmetic(operation, digits, format, train_examples, test_examples)
        name = f"arithmetic-{'add' if operation == '+' else 'sub' if operation == '-' else 'mul'}-{digits}d-{format}-" \
               f"{'padded-' if zero_pad else ''}{train_examples}-{test_examples}-{seed}"
        self.problems_dir = Path(cache_dir) / name
        super().__init__(str(self.problems_dir / "train.jsonl"), cache_dir, block_size, batch_size,
                         str(self.problems_dir / "test.jsonl"), tokenizer, vocab_size, 0.1, bucketing, bucket_batches,
                         pad_multiple, test_examples, num_workers, seed)
        self.options = (operation, digits, format, train_examples, test_examples, seed, zero_pad)

    def prepare(self) -> dict:
        if not (self.problems_dir / "test.jsonl").is_file():
            train, test = problems(*self.options)
            self.problems_dir.mkdir(parents=True, exist_ok=True)
            write_jsonl(train, self.problems_dir / "train.jsonl")
            write_jsonl(test, self.problems_dir / "test.jsonl")
        return super().prepare()


def score_answers(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 500) -> tuple[float, float]:
    """(exact match, per-character accuracy) of the answers ``model`` generates greedily for the prompts of ``pairs``
    against their answers: an answer counts when it equals the reference and then ends (the end token).

    At most ``batch_size`` prompts are generated at once, fewer where their logits would take more than
    ``GENERATION_LOGITS_BYTES`` (500 prompts of 30 GPT-2 tokens: 3 GB)."""
    prompts = [tokenizer.encode(prompt) for prompt, _ in pairs]
    longest_prompt = max(len(prompt) for prompt in prompts)
    batch_size = max(1, min(batch_size, GENERATION_LOGITS_BYTES // (4 * model.vocab_size * longest_prompt)))
    exact = right_characters = characters = 0
    for start in range(0, len(pairs), batch_size):
        chunk, chunk_prompts = pairs[start:start + batch_size], prompts[start:start + batch_size]
        longest = max(len(tokenizer.encode(answer)) for _, answer in chunk)
        rows = model.generate(chunk_prompts, longest + 1, temperature=0, eot_id=tokenizer.eot_id,
                              suppress_ids=tokenizer.special_ids - {tokenizer.eot_id})
        for (_, reference), prompt, row in zip(chunk, chunk_prompts, rows):
            generated = row[len(prompt):]
            ended = bool(generated) and generated[-1] == tokenizer.eot_id
            text = tokenizer.decode(generated[:-1] if ended else generated)
            exact += ended and text == reference
            right_characters += sum(a == b for a, b in zip(text, reference))
            characters += len(reference)
    return exact / len(pairs), right_characters / characters


class ExactMatch(L.Callback):
    """At each validation of data with checkable answers, logs ``val/exact_match`` and ``val/digit_acc`` of the
    held-out answers (``score_answers``); they can be monitored by the checkpoints and optimised by sweeps."""

    def __init__(self, batch_size: int = 500):
        self.batch_size, self.pairs = batch_size, None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.pairs = trainer.datamodule.held_out_answers()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self.pairs or trainer.sanity_checking:
            return
        exact, per_character = score_answers(pl_module.model, trainer.datamodule.tokenizer, self.pairs,
                                             self.batch_size)
        # every rank scores the same answers (greedy): the values agree, the sync only keeps Lightning content
        pl_module.log("val/exact_match", exact, prog_bar=True, sync_dist=True)
        pl_module.log("val/digit_acc", per_character, sync_dist=True)
