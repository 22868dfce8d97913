"""Fixed-length windows of a token stream: the text's first part for training, drawn at random, and its last part
for validation, evenly spaced. The format of ``data=text`` (and ``shakespeare_char``, ``shakespeare_bpe``)."""

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info
from tqdm import tqdm

from gpt import UserError
from gpt.data.module import TokenDataModule
from gpt.data.store import (PreparedData, TokenFile, check_val_fraction, encode_in_order, fit, prepare, prepared_name,
                            processes, token_dtype)
from gpt.data.text import CHUNK_CHARS, describe, read_documents, text_files
from gpt.data.tokenizers import Tokenizer
from gpt.files import atomic_writer

log = logging.getLogger(__name__)

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
    to disk (``train.bin``, ``val.bin``).

    - ``text_path``: a UTF-8 text file, or a directory whose ``*.txt`` files are documents;
    - ``val_fraction``: the share of the text, at its end, held out for validation;
    - ``val_windows``: at most this many validation windows, evenly spaced (null: all);
    - and the options of every format (``gpt.data.module.TokenDataModule``)."""

    def __init__(self, *, text_path: str, val_fraction: float = 0.1, val_windows: int | None = 2000, **options):
        if text_path is None:
            raise UserError("data.text_path is required: give data.text_path=<a text file or directory>")
        super().__init__(**options)
        self.text_path, self.val_fraction, self.val_windows = Path(text_path), val_fraction, val_windows

    def prepared_name(self) -> str:
        return prepared_name(self.text_path, self.tokenizer_kind, self.vocab_size)

    def describe_source(self) -> str:
        return str(self.text_path)

    def prepare(self) -> dict:
        return prepare_windows(self.text_path, self.data_dir, self.tokenizer_kind, self.val_fraction, self.vocab_size,
                               self.num_proc)

    def check(self) -> None:
        for split in ("train", "val"):
            n = self.prepared.split_tokens(split)
            if n <= self.block_size:
                raise UserError(f"{self.text_path} is too short: its {split} split has {n} tokens, fewer than "
                                f"block_size+1={self.block_size + 1}; use more text or a smaller block_size")

    def train_dataloader(self) -> DataLoader:
        dataset = RandomWindows(self.prepared.split("train"), self.block_size, self.batch_size, self.seed,
                                rank=self.rank, world_size=self.world_size, accumulate=self.accumulate,
                                start_batch=self.first_batch())
        return self.loader(dataset, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        dataset = FixedWindows(self.prepared.split("val"), self.block_size, self.val_windows)
        return self.loader(dataset, batch_size=self.batch_size)


# --------------------------------------------------------------------------- the writer: train.bin and val.bin


def prepare_windows(text_path: str | Path, out_dir: str | Path, tokenizer: str = "char", val_fraction: float = 0.1,
                    vocab_size: int | None = None, num_proc: int | None = None) -> dict:
    """Tokenize UTF-8 text into ``train.bin`` / ``val.bin`` (the first / last ``val_fraction`` of its characters);
    tokenizers with an end-of-text token put one after each document (file)."""
    text_path = Path(text_path)
    files = text_files(text_path)
    check_val_fraction(val_fraction)
    options = {"tokenizer": tokenizer, "vocab_size": vocab_size, "val_fraction": val_fraction}
    return prepare(Path(out_dir), files, options,
                   lambda out: build_windows(text_path, files, out, tokenizer, val_fraction, vocab_size, num_proc))


def build_windows(text_path: Path, files: list[Path], out_dir: Path, kind: str, val_fraction: float,
                   vocab_size: int | None, num_proc: int | None) -> tuple[Tokenizer, dict]:
    n_chars = sum(len(chunk) for chunk, _ in read_documents(files))
    if n_chars == 0:
        raise UserError(f"data file is empty: {text_path}")
    log.info("preparing %s (%s characters) in %s", describe(text_path, files), f"{n_chars:,}", out_dir)
    split_at = int(n_chars * (1 - val_fraction))

    def pieces() -> Iterator[tuple[tuple[str, int], str, bool]]:
        return (((split, len(text)), text, ends) for split, text, ends in _split(read_documents(files), split_at))

    tok = fit(kind, lambda: (text for (split, _), text, _ in pieces() if split == "train"),
              lambda: (chunk for chunk, _ in read_documents(files)), vocab_size)
    dtype, counts = token_dtype(tok.vocab_size), {"train_tokens": 0, "val_tokens": 0}
    progress = tqdm(total=n_chars, unit="char", unit_scale=True, desc=f"tokenizing ({tok.kind})",
                    disable=n_chars <= CHUNK_CHARS)
    data = PreparedData(out_dir)
    with atomic_writer(data.split_path("train")) as train, atomic_writer(data.split_path("val")) as val, progress:
        for (split, n), ids in encode_in_order(tok, pieces(), processes(num_proc, n_chars), batch_size=8):
            np.asarray(ids, dtype=dtype).tofile(train if split == "train" else val)
            counts[f"{split}_tokens"] += len(ids)
            progress.update(n)
    return tok, counts


def _split(documents: Iterator[tuple[str, bool]], split_at: int) -> Iterator[tuple[str, str, bool]]:
    """(split name, text, end of document): the characters before ``split_at`` go to "train", the rest to "val"."""
    position = 0
    for chunk, document_ends in documents:
        cut = min(max(split_at - position, 0), len(chunk))
        if cut:
            yield "train", chunk[:cut], document_ends and cut == len(chunk)
        if cut < len(chunk):
            yield "val", chunk[cut:], document_ends
        position += len(chunk)
