"""The prepared-data store: a directory of token files that training reads, prepared once from a source (no
Lightning here). ``PreparedData`` is the one owner of its layout: its file names and its meta keys.

A prepared directory holds the token files, ``tokenizer.json`` and ``meta.json``. ``meta.json`` is written last
and records the source (each file's stats, the SHA-256 of its content, the options, the format version), so a
directory is reused while its source is unchanged and prepared again otherwise (``prepare``). Of the processes that
start together (torchrun, SLURM), one prepares while the others wait for it, then read.

Each data format (``gpt.data.windows``, ``examples``, ``answers``) writes its files through ``PreparedData``:

- windows: ``train.bin`` and ``val.bin``, the first and the last part of the text (a large corpus: numbered
  shards of each, ``train-00000.bin``, ..., read as one stream by ``TokenShards``);
- examples: ``tokens.bin`` and the ``offsets.npy`` index of whole examples, each followed by the end token;
- answers: the same for prompt -> answer examples, with ``prompt_lengths.npy``.

Text is encoded in parallel processes (``encode_in_order``), a bounded number of pieces at a time.
"""

import errno
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from gpt import RunStopped, UserError
from gpt.data.text import CHUNK_CHARS
from gpt.data.tokenizers import Tokenizer, check_tokenizer_options, fit_tokenizer, tokenizer_from_dict
from gpt.files import atomic_write_text, atomic_writer, exclusive, first_missing, remove_temporary_files

log = logging.getLogger(__name__)

# bumped when tokenization or the meta changes, so that older prepared files are redone (3: BPE fitted on the train
# split; 4: the text's content hash)
PREPARED_FORMAT = 4


def check_val_fraction(val_fraction: float) -> None:
    if not isinstance(val_fraction, float) or not 0 < val_fraction < 1:
        raise UserError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def prepared_name(text_path: str | Path, tokenizer: str, vocab_size: int | None = None, kind: str | None = None) -> str:
    """The name of the directory where the token files of ``text_path`` are kept: the text's name, with a digest of
    its absolute path, so that two texts of the same name (``a/texts``, ``b/texts``) never share a directory."""
    digest = hashlib.sha1(str(Path(text_path).resolve()).encode()).hexdigest()[:8]
    name = f"{Path(text_path).stem}-{digest}-{tokenizer}{vocab_size if tokenizer == 'bpe' else ''}"
    return f"{name}-{kind}s" if kind else name


class TokenFile:
    """A token file mapped read-only into memory, once per process: a mapping is not carried across a fork, and
    a copy of this object in another process (a DataLoader worker) maps the file again."""

    def __init__(self, path: Path, dtype: str):
        self.path, self.dtype = path, dtype
        self._tokens, self._pid = None, None

    @property
    def tokens(self) -> np.memmap:
        if self._pid != os.getpid():
            self._tokens, self._pid = np.memmap(self.path, dtype=self.dtype, mode="r"), os.getpid()
        return self._tokens

    def __len__(self) -> int:
        return len(self.tokens)

    def windows(self, starts: np.ndarray, length: int) -> torch.Tensor:
        """The windows of ``length`` tokens beginning at ``starts``, as int64 (len(starts), length)."""
        return torch.from_numpy(self.tokens[starts[:, None] + np.arange(length)].astype(np.int64))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None, "_pid": None}


class TokenShards:
    """Token files read as one stream, in order (their boundaries are document boundaries): what ``TokenFile``
    gives, over shards, so that windows are drawn across them by their sizes."""

    def __init__(self, files: list[TokenFile]):
        self.files = files
        self.starts = np.cumsum([0] + [len(f) for f in files])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def windows(self, starts: np.ndarray, length: int) -> torch.Tensor:
        positions = starts[:, None] + np.arange(length)
        shard = np.searchsorted(self.starts, positions, side="right") - 1
        tokens = np.empty(positions.shape, dtype=np.int64)
        for i in np.unique(shard):
            where = shard == i
            tokens[where] = self.files[i].tokens[positions[where] - self.starts[i]]
        return torch.from_numpy(tokens)


# --------------------------------------------------------------------------- a prepared directory, read

COUNTS = ("vocab_size", "train_tokens", "val_tokens", "examples", "train_examples", "skipped_empty", "tokens",
          "documents", "kept_documents", "characters")


class PreparedData:
    """A prepared directory: the one place that knows its file names (the writers of the formats write through the
    paths it gives) and its meta keys. What it reads is checked, since a directory may be old or changed by hand: a
    UserError says to prepare it again."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.meta_path, self.tokenizer_path = self.dir / "meta.json", self.dir / "tokenizer.json"
        self.tokens_path, self.offsets_path = self.dir / "tokens.bin", self.dir / "offsets.npy"
        self.prompt_lengths_path = self.dir / "prompt_lengths.npy"

    def split_path(self, name: str) -> Path:
        """``train.bin`` or ``val.bin``: the tokens of a split of windows."""
        return self.dir / f"{name}.bin"

    def shard_path(self, name: str, index: int) -> Path:
        """``train-00000.bin``, ...: a shard of a split of a large corpus (``gpt.data.corpus``)."""
        return self.dir / f"{name}-{index:05d}.bin"

    @cached_property
    def meta(self) -> dict:
        meta = read_json(self.meta_path, self.dir)
        if (not isinstance(meta, dict) or meta.get("dtype") not in ("uint16", "uint32")
                or any(key in meta and (type(meta[key]) is not int or meta[key] < 0) for key in COUNTS)):
            raise UserError(f"{self.meta_path} is not as prepared; delete {self.dir} to prepare it again")
        return meta

    @cached_property
    def tokenizer(self) -> Tokenizer:
        tokenizer = read_json(self.tokenizer_path, self.dir)
        return tokenizer_from_dict(tokenizer if isinstance(tokenizer, dict) else {})

    def describe(self) -> str:
        """What the directory holds, in a line: its vocabulary and its splits."""
        meta = self.meta
        if "examples" in meta:
            kind = meta["source"]["options"].get("example", "example")
            counts = f"{meta['train_examples']:,} train and {meta['examples'] - meta['train_examples']:,} val {kind}s"
        else:
            counts = f"{meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens"
        return f"{self.dir}: vocabulary {meta['vocab_size']}, {counts} ({meta['dtype']})"

    def split(self, name: str) -> "TokenFile | TokenShards":
        """The tokens of the ``train`` or ``val`` split (windows): one file, or the shards of a large corpus."""
        shards = self.meta.get(f"{name}_shards")
        if shards is None:
            return self.token_file(self.split_path(name), self.split_tokens(name))
        if (not isinstance(shards, list) or not all(type(n) is int and n > 0 for n in shards)
                or sum(shards) != self.split_tokens(name)):
            raise UserError(f"{self.meta_path}: its {name}_shards do not fit its token count; delete {self.dir} to "
                            "prepare it again")
        return TokenShards([self.token_file(self.shard_path(name, i), n) for i, n in enumerate(shards)])

    def split_tokens(self, name: str) -> int:
        return self.meta[f"{name}_tokens"]

    @property
    def n_examples(self) -> int:
        return self.meta["examples"]

    @property
    def n_train_examples(self) -> int:
        return self.meta["train_examples"]

    def example_tokens(self) -> TokenFile:
        """Every example's tokens, one after another (examples)."""
        return self.token_file(self.tokens_path, self.meta["tokens"])

    @cached_property
    def example_offsets(self) -> np.ndarray:
        """Where each example starts in ``example_tokens()``, and where the last one ends (n_examples + 1)."""
        offsets = np.load(self.offsets_path, allow_pickle=False)
        if (offsets.shape != (self.n_examples + 1,) or offsets[0] != 0 or offsets[-1] != self.meta["tokens"]
                or (np.diff(offsets) < 0).any()):
            raise UserError(f"{self.offsets_path} does not fit its meta.json; delete {self.dir} to prepare it again")
        return offsets

    @cached_property
    def prompt_lengths(self) -> np.ndarray:
        """The prompt's length of each example (prompt -> answer examples); the rest of it is the answer."""
        lengths = np.load(self.prompt_lengths_path, allow_pickle=False)
        if lengths.shape != (self.n_examples,) or (lengths >= np.diff(self.example_offsets)).any():
            raise UserError(f"{self.prompt_lengths_path} does not fit its examples; delete {self.dir} to prepare it "
                            "again")
        return lengths

    def token_file(self, path: Path, expected_tokens: int) -> TokenFile:
        itemsize = np.dtype(self.meta["dtype"]).itemsize
        if not path.is_file() or path.stat().st_size != expected_tokens * itemsize:
            raise UserError(f"{path} does not hold the {expected_tokens} tokens of its meta.json; delete {self.dir} "
                            "to prepare it again")
        return TokenFile(path, self.meta["dtype"])

    def write_examples(self, examples: Iterable[list[int]], dtype: np.dtype) -> np.ndarray:
        """Write ``tokens.bin`` and the ``offsets.npy`` of ``examples`` (token lists), one after another; return
        the offsets."""
        lengths = []
        with atomic_writer(self.tokens_path) as f:
            for ids in examples:
                np.asarray(ids, dtype=dtype).tofile(f)
                lengths.append(len(ids))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.write_array(self.offsets_path, offsets)
        return offsets

    @staticmethod
    def write_array(path: Path, array: np.ndarray) -> None:
        with atomic_writer(path) as f:
            np.save(f, array)


def read_json(path: Path, directory: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}); delete {directory} to prepare it again") from None


# --------------------------------------------------------------------------- preparing a directory once


def prepare(out_dir: Path, files: list[Path], options: dict, build: Callable[[Path], tuple[Tokenizer, dict]],
            resumable: bool = False) -> dict:
    """The meta of ``out_dir`` prepared from ``files`` with ``options``: read when it is up to date, else made by
    ``build(out_dir)``, which writes the token files and returns (tokenizer, the rest of the meta). Options that
    cannot make a tokenizer are refused before anything is written. The lock and the temporary files of a process
    killed while preparing are inside ``out_dir``; the next process to prepare it removes the files. A directory
    that this call made is removed again when the preparation fails or is stopped (a ``resumable`` build's is kept
    when it is stopped, for the next call to resume), and a full disk is one line."""
    check_tokenizer_options(options["tokenizer"], options["vocab_size"])
    if meta := current_meta(out_dir, files, options):
        return meta
    made = first_missing(out_dir)  # the directory that this call makes (out_dir or one above it), if any
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with exclusive(out_dir / ".prepare.lock"):
            if meta := current_meta(out_dir, files, options):  # prepared by another process while this one waited
                return meta
            remove_temporary_files(out_dir)
            return build_unchanged(out_dir, files, options, build)
    except BaseException as e:
        if made and not (resumable and isinstance(e, (RunStopped, KeyboardInterrupt))):
            shutil.rmtree(made, ignore_errors=True)
        if isinstance(e, OSError):
            raise UserError(f"could not prepare the data in {out_dir}: {describe_os_error(e)}") from None
        raise


def describe_os_error(error: OSError) -> str:
    """Why a write failed, and what to do. numpy reports a short write (a full disk) without an errno."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT) or (error.errno is None and "written" in str(error)):
        return "no space left on the device; free some space, or prepare it elsewhere with paths.data_dir=..."
    return f"{error.strerror or error}"


def build_unchanged(out_dir: Path, files: list[Path], options: dict,
                    build: Callable[[Path], tuple[Tokenizer, dict]], attempts: int = 3) -> dict:
    """``build(out_dir)`` from a text that did not change while it was read: its stats and hash are taken before,
    and the stats compared after; a text written meanwhile is prepared again, up to ``attempts`` times."""
    for _ in range(attempts):
        stats, sha256 = file_stats(files), content_hash(files)
        try:
            tokenizer, fields = build(out_dir)
        except UserError:  # a text cut short by its writer can be refused: only a text that stayed as it was is
            if file_stats(files) == stats:
                raise
            continue
        if file_stats(files) == stats:
            break
    else:
        raise UserError(f"{', '.join(map(str, files))[:200]} changed while it was prepared, {attempts} times; prepare "
                        "it once nothing writes to it any more")
    prepared = PreparedData(out_dir)
    atomic_write_text(prepared.tokenizer_path, json.dumps(tokenizer.to_dict()))
    source = {"files": stats, "sha256": sha256, "options": options, "format": PREPARED_FORMAT}
    meta = {"source": source, "dtype": token_dtype(tokenizer.vocab_size).name, "vocab_size": tokenizer.vocab_size,
            **fields}
    atomic_write_text(prepared.meta_path, json.dumps(meta, indent=2))
    return meta


def current_meta(out_dir: Path, files: list[Path], options: dict) -> dict | None:
    """The meta of ``out_dir`` if it was prepared from the text of ``files`` with ``options``, else None. Files
    untouched since (the same size, times and inode) are not read again; files that were touched (copied with
    ``cp -p``, synced, restored) are compared by the SHA-256 of their content."""
    try:
        meta = PreparedData(out_dir).meta
    except UserError:
        return None  # none yet, or unreadable: prepared again
    source, stats = meta.get("source", {}), file_stats(files)
    if source.get("options") != options or source.get("format") != PREPARED_FORMAT:
        return None
    if source.get("files") == stats:
        return meta
    if source.get("sha256") != content_hash(files):
        return None
    meta["source"]["files"] = stats  # the same text: remember its new stats, so the next check is cheap again
    atomic_write_text(PreparedData(out_dir).meta_path, json.dumps(meta, indent=2))
    return meta


def file_stats(files: list[Path]) -> list[list]:
    """What changes whenever a file's content may have: any write updates its ctime, and a copy has a new inode."""
    return [[str(p.resolve()), (st := p.stat()).st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino] for p in files]


def content_hash(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.stat().st_size.to_bytes(8, "little"))  # where one file ends and the next begins
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def fit(kind: str, train_texts: Callable[[], Iterable[str]], all_texts: Callable[[], Iterable[str]],
        vocab_size: int | None) -> Tokenizer:
    """The tokenizer of the data. A BPE learns its merges from the training split only; a character vocabulary
    takes the characters of the whole text, since a character seen only in the validation split could not be
    encoded otherwise."""
    return fit_tokenizer(kind, train_texts() if kind == "bpe" else all_texts(), vocab_size)


# --------------------------------------------------------------------------- parallel encoding

_worker_tokenizer = None


def _start_worker(tokenizer_dict: dict) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer_from_dict(tokenizer_dict)


def _encode(piece: tuple[str, bool]) -> list[int]:
    text, document_ends = piece
    ids = _worker_tokenizer.encode(text)
    if document_ends and _worker_tokenizer.eot_id is not None:
        ids.append(_worker_tokenizer.eot_id)
    return ids


@contextmanager
def encoding_processes(num_proc: int, initializer: Callable | None = None, initargs: tuple = ()
                       ) -> Iterator[ProcessPoolExecutor]:
    """``num_proc`` forked processes that encode (gpt.signals resets their signal handlers). An executor rather
    than multiprocessing's Pool: a process killed mid-work (out of memory) is one error, where the Pool would wait
    for that work forever; a stopped preparation waits for no queued work."""
    with ProcessPoolExecutor(num_proc, multiprocessing.get_context("fork"), initializer, initargs) as pool:
        try:
            yield pool
        except BrokenProcessPool:
            raise UserError("an encoding process died (killed: out of memory?); prepare again with fewer "
                            "data.num_proc") from None
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


def encode_in_order(tokenizer: Tokenizer, pieces: Iterator[tuple[object, str, bool]], num_proc: int,
                    batch_size: int, chunksize: int = 1) -> Iterator[tuple[object, list[int]]]:
    """(tag, token ids) of each (tag, text, ends a document) piece, in order; the tokenizer's end token follows
    each document. ``num_proc`` processes encode ``batch_size`` pieces at a time, so memory stays bounded."""
    with encoding_processes(num_proc, _start_worker, (tokenizer.to_dict(),)) as pool:
        while batch := list(itertools.islice(pieces, batch_size)):
            tags = [tag for tag, _, _ in batch]
            yield from zip(tags, pool.map(_encode, [(text, ends) for _, text, ends in batch], chunksize=chunksize))


def processes(num_proc: int | None, n_chars: int) -> int:
    """Encoding processes: ``num_proc`` (default: one per core), but no more than there are chunks of text."""
    return min(num_proc or os.cpu_count() or 1, n_chars // CHUNK_CHARS + 1)


