"""What every data format gives ``train()`` and the callbacks: the contract of a ``TokenDataModule``.

A batch is always a dict of tensors:

- ``input_ids`` (B, T): token ids;
- ``labels`` (B, T): the token each position is trained to predict (the next one, or the masked one), -100 where
  there is none;
- ``attention_mask`` (B, T), in padded batches only: True at real tokens.

A format is one module (``gpt.data.windows``, ``examples``, ``answers``, ``arithmetic``) with one subclass and one
``conf/data/*.yaml`` that names it by ``_target_``. The subclass says where its data is prepared
(``prepared_name``), how (``prepare``: it writes through ``gpt.data.store.PreparedData``), what the prepared data
must hold (``check``), and makes its loaders. ``prepare.py`` and ``train.py`` reach it only through this class.
"""

from functools import cached_property
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from gpt.data.store import PreparedData
from gpt.data.tokenizers import Tokenizer, check_tokenizer_options


class TokenDataModule(L.LightningDataModule):
    """Data tokenized once to a directory of ``cache_dir`` (``prepare_data``: one process prepares while the
    others that start with it wait), with what the rest of a run relies on:

    - ``tokenizer``: the tokenizer the data was encoded with;
    - ``block_size``: the longest sequence a batch holds, the model's context (train.py passes it);
    - ``masks_tokens``: whether batches are masked-LM batches (such a module also gives ``val_example()``);
    - ``held_out_answers()``: (prompt, answer) pairs whose answers generation is checked against, or None;
    - its position: ``state_dict()`` records how many training batches were drawn (the checkpoint's step times the
      gradient accumulation), ``load_state_dict()`` restores it, and ``first_batch()`` is where the training loader
      of a resumed run starts, so that a resume sees the batches an uninterrupted run sees.

    Options (keyword-only, as every format's; Hydra passes them from ``conf/data``):

    - ``cache_dir``: where prepared data is kept (``paths.data_dir``);
    - ``batch_size``: sequences per micro-batch and device;
    - ``block_size``: the model's context (train.py passes ``model.block_size``; preparing needs none);
    - ``tokenizer``: ``char``, ``gpt2`` or ``bpe``; ``vocab_size``: the size of a BPE to train;
    - ``num_proc``: processes that encode text while it is prepared (null: one per core);
    - ``num_workers``: DataLoader worker processes (0: batches are made in the training process);
    - ``seed``: the random order of the batches.

    The loaders use no worker processes by default: a batch of windows is one gather from a memory-mapped file and
    a padded batch one small collate, each far cheaper than the step it feeds (``python bench/bench_padded.py``),
    while workers would add a copy between processes."""

    masks_tokens = False

    def __init__(self, *, cache_dir: str, batch_size: int, block_size: int | None = None, tokenizer: str = "char",
                 vocab_size: int | None = None, num_proc: int | None = None, num_workers: int = 0, seed: int = 1337):
        super().__init__()
        check_tokenizer_options(tokenizer, vocab_size)
        self.cache_dir, self.tokenizer_kind, self.vocab_size = Path(cache_dir), tokenizer, vocab_size
        self.block_size, self.batch_size, self.num_workers, self.seed = block_size, batch_size, num_workers, seed
        self.num_proc = num_proc
        self.start_batch: int | None = None  # restored by load_state_dict
        self.checked = False

    # --------------------------------------------------------------------------- what a format says

    def prepared_name(self) -> str:
        """The name of its prepared directory in ``cache_dir``: one per source and options."""
        raise NotImplementedError

    def prepare(self) -> dict:
        """Prepare ``data_dir`` if it is not up to date (``gpt.data.store.prepare``); return its meta."""
        raise NotImplementedError

    def check(self) -> None:
        """Stop with a UserError when the prepared data cannot make the batches asked for."""

    def describe_source(self) -> str:
        """What the data is made from, for the log."""
        return self.prepared_name()

    def held_out_answers(self) -> list[tuple[str, str]] | None:
        """Data without checkable answers has none."""
        return None

    # --------------------------------------------------------------------------- what every format shares

    @cached_property
    def prepared(self) -> PreparedData:
        return PreparedData(self.cache_dir / self.prepared_name())

    @property
    def data_dir(self) -> Path:
        return self.prepared.dir

    def prepare_data(self) -> None:
        self.prepare()

    def setup(self, stage: str | None = None) -> None:
        if not self.checked:  # train() checks the data before it writes anything; Lightning calls setup again
            self.check()
            self.checked = True

    @cached_property
    def tokenizer(self) -> Tokenizer:
        return self.prepared.tokenizer

    def state_dict(self) -> dict:
        trainer = self.trainer
        return {"train_batches": trainer.global_step * trainer.accumulate_grad_batches} if trainer else {}

    def load_state_dict(self, state_dict: dict) -> None:
        batches = state_dict.get("train_batches")
        self.start_batch = batches if type(batches) is int and batches >= 0 else None

    def first_batch(self) -> int:
        """Where the training loader starts: the position restored from the checkpoint, or for a checkpoint without
        one (written before data modules had a position) the micro-batches of the steps it had done."""
        if self.start_batch is not None:
            return self.start_batch
        return self.trainer.global_step * self.accumulate if self.trainer else 0

    @property
    def rank(self) -> int:
        return self.trainer.global_rank if self.trainer else 0

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer else 1

    @property
    def accumulate(self) -> int:
        return self.trainer.accumulate_grad_batches if self.trainer else 1

    def loader(self, dataset: Dataset, **options) -> DataLoader:
        return DataLoader(dataset, num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=self.num_workers > 0, **options)
