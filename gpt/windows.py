"""Fixed-length windows of a token stream: random ones for training, evenly spaced ones for validation."""

import itertools
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from gpt import UserError
from gpt.corpus import TokenFile, prepare_windows
from gpt.datamodule import TokenDataModule

STEPS_PER_DRAW = 64  # window starts are drawn for this many optimizer steps at once


class RandomWindows(IterableDataset):
    """An endless stream of batches of random windows of ``block_size`` tokens and the ``block_size`` after them.

    Batch ``b`` is a pure function of (seed, b, rank): the samples of one optimizer step are drawn together and
    split between micro-batches and ranks, so a run sees the same data for the same global batch whatever its
    number of processes, and a resumed run can start at any batch.
    """

    def __init__(self, file: TokenFile, block_size: int, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, accumulate: int = 1, start_batch: int = 0):
        super().__init__()
        self.file = file
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.rank, self.world_size, self.accumulate = rank, world_size, accumulate
        self.start_batch = start_batch
        self._draw, self._starts = None, None

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        for b in itertools.count(self.start_batch + worker_id, num_workers):
            yield self.batch(b)

    def batch(self, b: int) -> dict[str, torch.Tensor]:
        step, micro = divmod(b, self.accumulate)
        part = micro * self.world_size + self.rank
        starts = self.step_starts(step)[part * self.batch_size:(part + 1) * self.batch_size]
        windows = self.file.windows(starts, self.block_size + 1)
        return {"input_ids": windows[:, :-1], "labels": windows[:, 1:]}

    def step_starts(self, step: int) -> np.ndarray:
        """Where the windows of every micro-batch and rank of optimizer step ``step`` start."""
        draw = step // STEPS_PER_DRAW
        if draw != self._draw:  # one generator for STEPS_PER_DRAW steps: creating one per step costs more
            per_step = self.batch_size * self.world_size * self.accumulate
            rng = np.random.default_rng([self.seed, draw])
            self._starts = rng.integers(0, len(self.file) - self.block_size, size=(STEPS_PER_DRAW, per_step))
            self._draw = draw
        return self._starts[step % STEPS_PER_DRAW]


class FixedWindows(Dataset):
    """Evenly spaced windows over a token file, the same every time (so val losses compare across runs)."""

    def __init__(self, file: TokenFile, block_size: int, max_windows: int | None = None):
        self.file, self.block_size = file, block_size
        n_tokens = len(self.file)
        n_windows = (n_tokens - 1) // block_size
        if max_windows:
            n_windows = min(n_windows, max_windows)
        self.starts = np.linspace(0, n_tokens - block_size - 1, n_windows).astype(np.int64)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        window = self.file.windows(self.starts[i:i + 1], self.block_size + 1)[0]
        return {"input_ids": window[:-1], "labels": window[1:]}


class WindowsDataModule(TokenDataModule):
    """Random training windows and fixed validation windows of ``block_size`` tokens from a text tokenized once
    to disk (``train.bin``, ``val.bin``)."""

    def __init__(self, text_path: str, cache_dir: str, block_size: int, batch_size: int, tokenizer: str = "char",
                 vocab_size: int | None = None, val_fraction: float = 0.1, val_windows: int | None = 2000,
                 num_workers: int = 0, seed: int = 1337):
        super().__init__(text_path, cache_dir, block_size, batch_size, tokenizer, vocab_size, val_fraction,
                         num_workers, seed)
        self.val_windows = val_windows

    def prepare(self) -> dict:
        return prepare_windows(self.text_path, self.data_dir, self.tokenizer_kind, self.val_fraction, self.vocab_size)

    def check(self) -> None:
        for split in ("train", "val"):
            n = self.prepared.split_tokens(split)
            if n <= self.block_size:
                raise UserError(f"{self.text_path} is too short: its {split} split has {n} tokens, fewer than "
                                f"block_size+1={self.block_size + 1}; use more text or a smaller block_size")

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        accumulate = trainer.accumulate_grad_batches if trainer else 1
        dataset = RandomWindows(
            self.prepared.split("train"), self.block_size, self.batch_size, self.seed,
            rank=self.rank, world_size=self.world_size, accumulate=accumulate,
            # a resumed run goes on with the batch after the last optimizer step of its checkpoint
            start_batch=trainer.global_step * accumulate if trainer else 0)
        return self.loader(dataset, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        dataset = FixedWindows(self.prepared.split("val"), self.block_size, self.val_windows)
        return self.loader(dataset, batch_size=self.batch_size)
