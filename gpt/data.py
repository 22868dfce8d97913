"""Text -> token files on disk (memmap) -> batches, as a LightningDataModule."""

import itertools
import json
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info
from tqdm import tqdm

from gpt import UserError, check_positive
from gpt.tokenizers import fit_tokenizer, tokenizer_from_dict

CHUNK_CHARS = 1 << 20
PREPARED_FORMAT = 2  # bumped when tokenization changes, so older prepared files are redone (2: char specials)


def text_files(text_path: Path) -> list[Path]:
    """A text file, or every ``*.txt`` file under a directory; each file is one document."""
    if text_path.is_dir():
        files = sorted(p for p in text_path.rglob("*.txt") if p.is_file())
        if not files:
            raise UserError(f"no *.txt files in directory {text_path}")
        return files
    if not text_path.is_file():
        raise UserError(f"data file not found: {text_path}; set data.text_path to a UTF-8 text file")
    return [text_path]


def read_chunks(path: Path) -> Iterator[str]:
    """Yield the text of ``path`` in chunks of about CHUNK_CHARS characters, each ending at a line end."""
    try:
        with open(path, encoding="utf-8") as f:
            while chunk := f.read(CHUNK_CHARS):
                yield chunk + f.readline()
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (bad byte at offset {e.start} of a chunk); "
                        "convert it with iconv -t utf-8") from None


def read_documents(files: list[Path]) -> Iterator[tuple[str, bool]]:
    """(chunk, is the last chunk of its document) for every chunk of every file."""
    for path in files:
        previous = None
        for chunk in read_chunks(path):
            if previous is not None:
                yield previous, False
            previous = chunk
        if previous is not None:
            yield previous, True


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def prepared_dir(cache_dir: str | Path, text_path: str | Path, tokenizer: str, vocab_size: int | None = None) -> Path:
    """Where the token files of ``text_path`` encoded with ``tokenizer`` are kept."""
    name = f"{Path(text_path).stem}-{tokenizer}{vocab_size if tokenizer == 'bpe' else ''}"
    return Path(cache_dir) / name


def prepare(text_path: str | Path, out_dir: str | Path, tokenizer: str = "char", val_fraction: float = 0.1,
            vocab_size: int | None = None, num_proc: int | None = None) -> dict:
    """Tokenize UTF-8 text into ``train.bin`` / ``val.bin`` (first / last part of the text) plus
    ``tokenizer.json`` and ``meta.json`` in ``out_dir``. Skips the work when ``out_dir`` is up to date.

    The text is streamed in chunks (files larger than memory work) and encoded in ``num_proc``
    processes; tokenizers with an end-of-text token get one after each document (file)."""
    text_path, out_dir = Path(text_path), Path(out_dir)
    files = text_files(text_path)
    check_val_fraction(val_fraction)
    source = describe_source(files, tokenizer=tokenizer, vocab_size=vocab_size, val_fraction=val_fraction)
    if meta := current_meta(out_dir, source):
        return meta

    n_chars = sum(len(chunk) for chunk, _ in read_documents(files))
    if n_chars == 0:
        raise UserError(f"data file is empty: {text_path}")
    tok = fit_tokenizer(tokenizer, (chunk for chunk, _ in read_documents(files)), vocab_size)
    dtype = token_dtype(tok.vocab_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    pieces = _split_pieces(read_documents(files), split_at=int(n_chars * (1 - val_fraction)))
    num_proc = min(num_proc or os.cpu_count() or 1, n_chars // CHUNK_CHARS + 1)
    counts = _write_token_files(pieces, out_dir, tok, dtype, n_chars, num_proc)
    atomic_write_text(out_dir / "tokenizer.json", json.dumps(tok.to_dict()))
    meta = {"source": source, "dtype": dtype.name, "vocab_size": tok.vocab_size, **counts}
    atomic_write_text(out_dir / "meta.json", json.dumps(meta, indent=2))
    return meta


def check_val_fraction(val_fraction: float) -> None:
    if not isinstance(val_fraction, float) or not 0 < val_fraction < 1:
        raise UserError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")


def describe_source(files: list[Path], **options) -> dict:
    """What prepared files depend on: the text files (path, size, mtime), the options and the format."""
    return {"files": [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files],
            **options, "format": PREPARED_FORMAT}


def current_meta(out_dir: Path, source: dict) -> dict | None:
    """The ``meta.json`` of ``out_dir`` when it was prepared from ``source``, else None (prepare again)."""
    meta_path = out_dir / "meta.json"
    if meta_path.is_file() and (meta := json.loads(meta_path.read_text())).get("source") == source:
        return meta
    return None


def _split_pieces(documents: Iterator[tuple[str, bool]], split_at: int) -> Iterator[tuple[str, str, bool]]:
    """(split name, text, end of document) with characters before ``split_at`` in "train", the rest in "val"."""
    position = 0
    for chunk, document_ends in documents:
        cut = min(max(split_at - position, 0), len(chunk))
        if cut:
            yield "train", chunk[:cut], document_ends and cut == len(chunk)
        if cut < len(chunk):
            yield "val", chunk[cut:], document_ends
        position += len(chunk)


_worker_tokenizer = None


def start_encoding_worker(tokenizer_dict: dict) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer_from_dict(tokenizer_dict)


def encode_piece(piece: tuple[str, str, bool]) -> tuple[str, list[int], int]:
    split, text, document_ends = piece
    ids = _worker_tokenizer.encode(text)
    if document_ends and _worker_tokenizer.eot_id is not None:
        ids.append(_worker_tokenizer.eot_id)
    return split, ids, len(text)


def _write_token_files(pieces: Iterator[tuple[str, str, bool]], out_dir: Path, tok, dtype: np.dtype,
                       n_chars: int, num_proc: int) -> dict:
    """Encode pieces in parallel, a few at a time so memory stays bounded, and append them in order."""
    files = {name: open(out_dir / f"{name}.bin.tmp", "wb") for name in ("train", "val")}
    counts = {"train_tokens": 0, "val_tokens": 0}
    progress = tqdm(total=n_chars, unit="char", unit_scale=True, desc=f"tokenizing ({tok.kind})",
                    disable=n_chars <= CHUNK_CHARS)
    try:
        with multiprocessing.get_context("fork").Pool(num_proc, start_encoding_worker, (tok.to_dict(),)) as pool:
            while batch := list(itertools.islice(pieces, 2 * num_proc)):
                for split, ids, n in pool.map(encode_piece, batch):
                    np.asarray(ids, dtype=dtype).tofile(files[split])
                    counts[f"{split}_tokens"] += len(ids)
                    progress.update(n)
    finally:
        progress.close()
        for f in files.values():
            f.close()
    for name in files:
        os.replace(out_dir / f"{name}.bin.tmp", out_dir / f"{name}.bin")
    return counts


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class RandomWindows(IterableDataset):
    """An endless stream of batches of random windows of ``block_size + 1`` tokens.

    Batch ``b`` is a pure function of (seed, b, rank): the samples of one optimizer step are drawn
    together and split between micro-batches and ranks, so a run sees the same data for the same
    global batch whatever its number of processes, and a resumed run can start at any batch.
    """

    def __init__(self, path: Path, dtype: str, block_size: int, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, accumulate: int = 1, start_batch: int = 0):
        super().__init__()
        self.path, self.dtype = path, dtype
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.rank, self.world_size, self.accumulate = rank, world_size, accumulate
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        for b in itertools.count(self.start_batch + worker_id, num_workers):
            yield self.batch(b)

    def batch(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        step, micro = divmod(b, self.accumulate)
        data = np.memmap(self.path, dtype=self.dtype, mode="r")  # re-opened per batch: safe across forks
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(data) - self.block_size, size=self.batch_size * self.world_size * self.accumulate)
        part = micro * self.world_size + self.rank
        starts = starts[part * self.batch_size:(part + 1) * self.batch_size]
        windows = torch.from_numpy(np.stack([data[s:s + self.block_size + 1] for s in starts]).astype(np.int64))
        return windows[:, :-1], windows[:, 1:]


class FixedWindows(Dataset):
    """Evenly spaced windows over a token file, the same every time (so val losses compare across runs)."""

    def __init__(self, path: Path, dtype: str, block_size: int, max_windows: int | None = None):
        self.path, self.dtype, self.block_size = path, dtype, block_size
        n_tokens = len(np.memmap(path, dtype=dtype, mode="r"))
        n_windows = (n_tokens - 1) // block_size
        if max_windows:
            n_windows = min(n_windows, max_windows)
        self.starts = np.linspace(0, n_tokens - block_size - 1, n_windows).astype(np.int64)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        data = np.memmap(self.path, dtype=self.dtype, mode="r")
        s = self.starts[i]
        window = torch.from_numpy(data[s:s + self.block_size + 1].astype(np.int64))
        return window[:-1], window[1:]


class TokenDataModule(L.LightningDataModule):
    """Random training windows and fixed validation windows from a text file tokenized once to disk."""

    def __init__(self, text_path: str, cache_dir: str, block_size: int, batch_size: int,
                 tokenizer: str = "char", vocab_size: int | None = None, val_fraction: float = 0.1,
                 val_windows: int | None = 2000,
                 num_workers: int = 0, seed: int = 1337):
        super().__init__()
        check_positive("data.block_size", block_size)
        check_positive("data.batch_size", batch_size)
        self.text_path = Path(text_path)
        self.data_dir = prepared_dir(cache_dir, text_path, tokenizer, vocab_size)
        self.tokenizer_kind, self.vocab_size, self.val_fraction = tokenizer, vocab_size, val_fraction
        self.block_size, self.batch_size = block_size, batch_size
        self.val_windows, self.num_workers, self.seed = val_windows, num_workers, seed
        self.meta: dict | None = None

    def prepare_data(self) -> None:
        prepare(self.text_path, self.data_dir, self.tokenizer_kind, self.val_fraction, self.vocab_size)

    def setup(self, stage: str | None = None) -> None:
        self.meta = json.loads((self.data_dir / "meta.json").read_text())
        for split in ("train", "val"):
            n = self.meta[f"{split}_tokens"]
            if n <= self.block_size:
                raise UserError(f"{self.text_path} is too short: its {split} split has {n} tokens, "
                                f"fewer than block_size+1={self.block_size + 1}; use more text or a smaller block_size")

    @property
    def tokenizer(self):
        return tokenizer_from_dict(json.loads((self.data_dir / "tokenizer.json").read_text()))

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        accumulate = trainer.accumulate_grad_batches if trainer else 1
        dataset = RandomWindows(
            self.data_dir / "train.bin", self.meta["dtype"], self.block_size, self.batch_size, self.seed,
            rank=trainer.global_rank if trainer else 0, world_size=trainer.world_size if trainer else 1,
            accumulate=accumulate,
            # a resumed run goes on with the batch after the last optimizer step of its checkpoint
            start_batch=trainer.global_step * accumulate if trainer else 0)
        return self._loader(dataset, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        dataset = FixedWindows(self.data_dir / "val.bin", self.meta["dtype"], self.block_size, self.val_windows)
        return self._loader(dataset, batch_size=self.batch_size)

    def _loader(self, dataset: Dataset, batch_size: int | None) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available(), persistent_workers=self.num_workers > 0)
