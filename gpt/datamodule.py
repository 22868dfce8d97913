"""What every data module gives ``train()`` and the callbacks (the windows and examples modules build on it).

A batch is always a dict of tensors:

- ``input_ids`` (B, T): token ids;
- ``labels`` (B, T): the token each position is trained to predict (the next one, or the masked one), -100 where
  there is none;
- ``attention_mask`` (B, T), in padded batches only: True at real tokens.
"""

from functools import cached_property
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from gpt.corpus import PreparedData, prepared_dir
from gpt.tokenizers import Tokenizer


class TokenDataModule(L.LightningDataModule):
    """Text tokenized once to a directory of ``cache_dir`` (``prepare_data``: one process prepares while the
    others that start with it wait), with what the rest of a run relies on:

    - ``tokenizer``: the tokenizer the data was encoded with (``tokenizer=`` names its kind: char, gpt2, bpe);
    - ``block_size``: the longest sequence a batch holds, the model's context (train.py passes it);
    - ``masks_tokens``: whether batches are masked-LM batches (such a module also gives ``val_example()``);
    - ``held_out_answers()``: (prompt, answer) pairs whose answers generation is checked against, or None.

    A subclass prepares its format (``prepare``), checks it (``check``) and makes its datasets and loaders.

    The loaders use no worker processes by default (``num_workers=0``): a batch of windows is one gather from a
    memory-mapped file and a padded batch one small collate, each far cheaper than the step it feeds (see
    ``python bench/bench_padded.py``), while workers would add a copy between processes."""

    masks_tokens = False

    def __init__(self, text_path: str, cache_dir: str, block_size: int, batch_size: int, tokenizer: str = "char",
                 vocab_size: int | None = None, val_fraction: float = 0.1, num_workers: int = 0, seed: int = 1337,
                 example: str | None = None):
        super().__init__()
        self.text_path = Path(text_path)
        self.prepared = PreparedData(prepared_dir(cache_dir, text_path, tokenizer, vocab_size, example))
        self.tokenizer_kind, self.vocab_size, self.val_fraction = tokenizer, vocab_size, val_fraction
        self.block_size, self.batch_size, self.num_workers, self.seed = block_size, batch_size, num_workers, seed
        self.checked = False

    @property
    def data_dir(self) -> Path:
        return self.prepared.dir

    def prepare(self) -> dict:
        """Prepare ``data_dir`` if it is not up to date; return its meta."""
        raise NotImplementedError

    def check(self) -> None:
        """Stop with a UserError when the prepared data cannot make the batches asked for."""

    def prepare_data(self) -> None:
        self.prepare()

    def setup(self, stage: str | None = None) -> None:
        if not self.checked:  # train() checks the data before it writes anything; Lightning calls setup again
            self.check()
            self.checked = True

    @cached_property
    def tokenizer(self) -> Tokenizer:
        return self.prepared.tokenizer

    def held_out_answers(self) -> list[tuple[str, str]] | None:
        """Text without checkable answers has none."""
        return None

    @property
    def rank(self) -> int:
        return self.trainer.global_rank if self.trainer else 0

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer else 1

    def loader(self, dataset: Dataset, **options) -> DataLoader:
        return DataLoader(dataset, num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=self.num_workers > 0, **options)
