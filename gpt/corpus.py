"""Text files -> token files on disk: the format the training data is read from (no Lightning here).

A prepared directory holds the token files, ``tokenizer.json`` and ``meta.json``. ``meta.json`` is written last
and records the source (each text file's stats, the SHA-256 of the text, the options, the format version), so a
directory is reused while its text is unchanged and prepared again otherwise. Of the processes that start together
(torchrun, SLURM), one prepares while the others wait for it, then read. ``PreparedData`` reads a directory.

- windows (``prepare_windows``): ``train.bin`` and ``val.bin``, the first and the last part of the text, from
  which training draws windows of a fixed length;
- examples (``prepare_examples``): ``tokens.bin`` and the ``offsets.npy`` index of whole lines, paragraphs or
  documents, each followed by ``<|endoftext|>``; the last part of them is the validation split;
- answers (``prepare_answers``): the same for prompt -> answer examples of JSONL files, with ``prompt_lengths.npy``.

The text is read in chunks (files larger than memory work) and encoded in parallel processes.
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
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from gpt import UserError
from gpt.bpe import DEFAULT_SPECIAL_TOKENS, ENDOFTEXT
from gpt.files import atomic_write_text, atomic_writer, exclusive, remove_temporary_files
from gpt.tokenizers import Tokenizer, check_tokenizer_options, fit_tokenizer, tokenizer_from_dict

log = logging.getLogger(__name__)

CHUNK_CHARS = 1 << 20
# bumped when tokenization or the meta changes, so that older prepared files are redone (3: BPE fitted on the train
# split; 4: the text's content hash)
PREPARED_FORMAT = 4
EXAMPLES = ("line", "paragraph", "document")


# --------------------------------------------------------------------------- the text files


def text_files(text_path: Path) -> list[Path]:
    """A text file, or every ``*.txt`` file in a directory and its subdirectories; each file is one document."""
    if text_path.is_dir():
        files = sorted(p for p in text_path.rglob("*.txt") if p.is_file())
        if not files:
            raise UserError(f"no *.txt files in directory {text_path} or below it")
        return files
    if not text_path.is_file():
        raise UserError(f"data file not found: {text_path}; set data.text_path to a UTF-8 text file")
    return [text_path]


def read_chunks(path: Path) -> Iterator[str]:
    """The text of ``path`` in chunks of about CHUNK_CHARS characters, each ending at a line end."""
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


def check_val_fraction(val_fraction: float) -> None:
    if not isinstance(val_fraction, float) or not 0 < val_fraction < 1:
        raise UserError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def prepared_dir(cache_dir: str | Path, text_path: str | Path, tokenizer: str, vocab_size: int | None = None,
                 example: str | None = None) -> Path:
    """Where the token files of ``text_path`` are kept: named after the text, with a digest of its absolute path,
    so that two texts of the same name (``a/texts``, ``b/texts``) never share a directory."""
    digest = hashlib.sha1(str(Path(text_path).resolve()).encode()).hexdigest()[:8]
    name = f"{Path(text_path).stem}-{digest}-{tokenizer}{vocab_size if tokenizer == 'bpe' else ''}"
    return Path(cache_dir) / (f"{name}-{example}s" if example else name)


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


# --------------------------------------------------------------------------- a prepared directory, read

COUNTS = ("vocab_size", "train_tokens", "val_tokens", "examples", "train_examples", "skipped_empty", "tokens")


class PreparedData:
    """A prepared directory as training reads it: the one place that knows its file names and meta keys. What it
    reads is checked, since a directory may be old or changed by hand: a UserError says to prepare it again."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    @cached_property
    def meta(self) -> dict:
        meta = read_json(self.dir / "meta.json", self.dir)
        if (not isinstance(meta, dict) or meta.get("dtype") not in ("uint16", "uint32")
                or any(key in meta and (type(meta[key]) is not int or meta[key] < 0) for key in COUNTS)):
            raise UserError(f"{self.dir / 'meta.json'} is not as prepared; delete {self.dir} to prepare it again")
        return meta

    @cached_property
    def tokenizer(self) -> Tokenizer:
        tokenizer = read_json(self.dir / "tokenizer.json", self.dir)
        return tokenizer_from_dict(tokenizer if isinstance(tokenizer, dict) else {})

    def split(self, name: str) -> TokenFile:
        """The tokens of the ``train`` or ``val`` split (windows)."""
        return self.token_file(f"{name}.bin", self.meta[f"{name}_tokens"])

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
        return self.token_file("tokens.bin", self.meta["tokens"])

    @cached_property
    def example_offsets(self) -> np.ndarray:
        """Where each example starts in ``example_tokens()``, and where the last one ends (n_examples + 1)."""
        offsets = np.load(self.dir / "offsets.npy", allow_pickle=False)
        if (offsets.shape != (self.n_examples + 1,) or offsets[0] != 0 or offsets[-1] != self.meta["tokens"]
                or (np.diff(offsets) < 0).any()):
            raise UserError(f"{self.dir / 'offsets.npy'} does not fit its meta.json; delete {self.dir} to prepare it "
                            "again")
        return offsets

    @cached_property
    def prompt_lengths(self) -> np.ndarray:
        """The prompt's length of each example (prompt -> answer examples); the rest of it is the answer."""
        lengths = np.load(self.dir / "prompt_lengths.npy", allow_pickle=False)
        if lengths.shape != (self.n_examples,) or (lengths >= np.diff(self.example_offsets)).any():
            raise UserError(f"{self.dir / 'prompt_lengths.npy'} does not fit its examples; delete {self.dir} to "
                            "prepare it again")
        return lengths

    def token_file(self, name: str, expected_tokens: int) -> TokenFile:
        path = self.dir / name
        itemsize = np.dtype(self.meta["dtype"]).itemsize
        if not path.is_file() or path.stat().st_size != expected_tokens * itemsize:
            raise UserError(f"{path} does not hold the {expected_tokens} tokens of its meta.json; delete {self.dir} "
                            "to prepare it again")
        return TokenFile(path, self.meta["dtype"])


def read_json(path: Path, directory: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}); delete {directory} to prepare it again") from None


# --------------------------------------------------------------------------- preparing a directory once


def prepare(out_dir: Path, files: list[Path], options: dict, build: Callable[[Path], tuple[Tokenizer, dict]]) -> dict:
    """The meta of ``out_dir`` prepared from ``files`` with ``options``: read when it is up to date, else made by
    ``build(out_dir)``, which writes the token files and returns (tokenizer, the rest of the meta). Options that
    cannot make a tokenizer are refused before anything is written. The lock and the temporary files of a process
    killed while preparing are inside ``out_dir``; the next process to prepare it removes the files. A directory
    that this call made is removed again when the preparation fails or is stopped, and a full disk is one line."""
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
        if made:
            shutil.rmtree(made, ignore_errors=True)
        if isinstance(e, OSError):
            raise UserError(f"could not prepare the data in {out_dir}: {describe_os_error(e)}") from None
        raise


def first_missing(directory: Path) -> Path | None:
    """The outermost of ``directory`` and its parents that does not exist yet."""
    missing = None
    for path in (directory, *directory.parents):
        if path.exists():
            return missing
        missing = path
    return missing


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
    atomic_write_text(out_dir / "tokenizer.json", json.dumps(tokenizer.to_dict()))
    source = {"files": stats, "sha256": sha256, "options": options, "format": PREPARED_FORMAT}
    meta = {"source": source, "dtype": token_dtype(tokenizer.vocab_size).name, "vocab_size": tokenizer.vocab_size,
            **fields}
    atomic_write_text(out_dir / "meta.json", json.dumps(meta, indent=2))
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
    atomic_write_text(out_dir / "meta.json", json.dumps(meta, indent=2))
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


def describe(text_path: Path, files: list[Path]) -> str:
    if text_path.is_dir():
        return f"{text_path}: {len(files)} *.txt file(s) found in it and its subdirectories, one document each"
    return str(text_path)


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


def encode_in_order(tokenizer: Tokenizer, pieces: Iterator[tuple[object, str, bool]], num_proc: int,
                    batch_size: int, chunksize: int = 1) -> Iterator[tuple[object, list[int]]]:
    """(tag, token ids) of each (tag, text, ends a document) piece, in order; the tokenizer's end token follows
    each document. ``num_proc`` processes encode ``batch_size`` pieces at a time, so memory stays bounded."""
    with multiprocessing.get_context("fork").Pool(num_proc, _start_worker, (tokenizer.to_dict(),)) as pool:
        while batch := list(itertools.islice(pieces, batch_size)):
            tags = [tag for tag, _, _ in batch]
            yield from zip(tags, pool.map(_encode, [(text, ends) for _, text, ends in batch], chunksize))


def processes(num_proc: int | None, n_chars: int) -> int:
    """Encoding processes: ``num_proc`` (default: one per core), but no more than there are chunks of text."""
    return min(num_proc or os.cpu_count() or 1, n_chars // CHUNK_CHARS + 1)


# --------------------------------------------------------------------------- windows: train.bin and val.bin


def prepare_windows(text_path: str | Path, out_dir: str | Path, tokenizer: str = "char", val_fraction: float = 0.1,
                    vocab_size: int | None = None, num_proc: int | None = None) -> dict:
    """Tokenize UTF-8 text into ``train.bin`` / ``val.bin`` (the first / last ``val_fraction`` of its characters);
    tokenizers with an end-of-text token put one after each document (file)."""
    text_path = Path(text_path)
    files = text_files(text_path)
    check_val_fraction(val_fraction)
    options = {"tokenizer": tokenizer, "vocab_size": vocab_size, "val_fraction": val_fraction}
    return prepare(Path(out_dir), files, options,
                   lambda out: _build_windows(text_path, files, out, tokenizer, val_fraction, vocab_size, num_proc))


def _build_windows(text_path: Path, files: list[Path], out_dir: Path, kind: str, val_fraction: float,
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
    with atomic_writer(out_dir / "train.bin") as train, atomic_writer(out_dir / "val.bin") as val, progress:
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


# --------------------------------------------------------------------------- examples: tokens.bin and offsets.npy


def iter_examples(files: list[Path], example: str) -> Iterator[str]:
    """Every example of the files in order, empty ones included (the caller skips and counts them).

    line: each line; paragraph: runs of non-blank lines (blank lines separate them); document: the text
    between ``<|endoftext|>`` markers, and each file is at least one document."""
    for path in files:
        if example == "document":
            yield from (document.strip("\n") for document in _documents(read_chunks(path)))
            continue
        lines = (line for chunk in read_chunks(path) for line in chunk.removesuffix("\n").split("\n"))
        yield from lines if example == "line" else _paragraphs(lines)


def _paragraphs(lines: Iterable[str]) -> Iterator[str]:
    paragraph: list[str] = []
    for line in lines:
        if line.strip():
            paragraph.append(line)
        elif paragraph:
            yield "\n".join(paragraph)
            paragraph = []
    if paragraph:
        yield "\n".join(paragraph)


def _documents(chunks: Iterable[str]) -> Iterator[str]:
    parts: list[str] = []  # the document read so far (chunks end at line ends, so no marker is cut in two)
    for chunk in chunks:
        *ended, rest = chunk.split(ENDOFTEXT)
        for piece in ended:
            yield "".join(parts) + piece
            parts = []
        parts.append(rest)
    yield "".join(parts)


def prepare_examples(text_path: str | Path, out_dir: str | Path, example: str = "paragraph", tokenizer: str = "char",
                     vocab_size: int | None = None, val_fraction: float = 0.1, num_proc: int | None = None) -> dict:
    """Tokenize the non-empty examples of a text into ``tokens.bin`` + ``offsets.npy``; the last ``val_fraction``
    of the examples is the validation split."""
    text_path = Path(text_path)
    if example not in EXAMPLES:
        raise UserError(f"data.example={example!r} is not a valid option; choose one of {', '.join(EXAMPLES)}")
    check_val_fraction(val_fraction)
    files = text_files(text_path)
    options = {"example": example, "tokenizer": tokenizer, "vocab_size": vocab_size, "val_fraction": val_fraction}
    return prepare(Path(out_dir), files, options, lambda out: _build_examples(
        text_path, files, out, example, tokenizer, val_fraction, vocab_size, num_proc))


def _build_examples(text_path: Path, files: list[Path], out_dir: Path, example: str, kind: str,
                    val_fraction: float, vocab_size: int | None, num_proc: int | None) -> tuple[Tokenizer, dict]:
    def examples() -> Iterator[str]:
        return (text for text in iter_examples(files, example) if text.strip())

    n_examples, n_all = 0, 0
    for text in iter_examples(files, example):
        n_all += 1
        n_examples += bool(text.strip())
    n_train = int(n_examples * (1 - val_fraction))
    if n_examples == 0:
        raise UserError(f"{text_path} has no {example}s: all {n_all} were empty; "
                        f"use another text or another data.example ({', '.join(EXAMPLES)})")
    if not 0 < n_train < n_examples:
        raise UserError(f"{text_path} has only {n_examples} {example}(s), too few for a train and a val split; "
                        "use more text, or data.example=line for more examples")
    log.info("preparing %s: %d %ss (%d empty skipped) in %s", describe(text_path, files), n_examples, example,
             n_all - n_examples, out_dir)
    tok = fit(kind, lambda: (text + "\n" for text in itertools.islice(examples(), n_train)),
              lambda: (chunk for path in files for chunk in read_chunks(path)), vocab_size)
    dtype, lengths = token_dtype(tok.vocab_size), []
    n_chars = sum(p.stat().st_size for p in files)
    with atomic_writer(out_dir / "tokens.bin") as f:
        pieces = ((None, text, True) for text in examples())  # True: each example ends with the end token
        for _, ids in encode_in_order(tok, pieces, processes(num_proc, n_chars), batch_size=4096, chunksize=64):
            np.asarray(ids, dtype=dtype).tofile(f)
            lengths.append(len(ids))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    with atomic_writer(out_dir / "offsets.npy") as f:
        np.save(f, offsets)
    return tok, {"examples": n_examples, "train_examples": n_train, "skipped_empty": n_all - n_examples,
                 "tokens": int(offsets[-1])}


# --------------------------------------------------------------------------- answers: prompt -> answer examples


def read_answers(path: Path) -> list[tuple[str, str]]:
    """The (prompt, answer) pairs of a JSONL file: one ``{"prompt": ..., "answer": ...}`` object per line (blank lines
    are skipped); a line that is not one, or whose answer is empty, is refused by its number."""
    pairs = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    pairs.append(answer_pair(line, f"{path}:{number}"))
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; convert it with iconv -t utf-8") from None
    if not pairs:
        raise UserError(f"{path} has no examples; write one {{\"prompt\": ..., \"answer\": ...}} object per line")
    return pairs


def answer_pair(line: str, where: str) -> tuple[str, str]:
    try:
        item = json.loads(line)
    except json.JSONDecodeError:
        item = None
    if not isinstance(item, dict):
        raise UserError(f"{where} is not a JSON object; write one {{\"prompt\": ..., \"answer\": ...}} per line")
    for key in ("prompt", "answer"):
        if not isinstance(item.get(key), str):
            raise UserError(f"{where} has no text under {key!r}; each line needs {{\"prompt\": ..., \"answer\": ...}}")
    if not item["prompt"] or not item["answer"]:
        empty = "prompt" if not item["prompt"] else "answer"
        raise UserError(f"{where} has an empty {empty}; every example needs a prompt to answer and an answer to learn")
    for key in ("prompt", "answer"):
        if token := next((t for t in DEFAULT_SPECIAL_TOKENS if t in item[key]), None):
            raise UserError(f"{where} has {token} in its {key}, which the tokenizers read as a special token, not as "
                            f"text ({ENDOFTEXT} ends every answer); remove it")
    return item["prompt"], item["answer"]


def prepare_answers(text_path: str | Path, out_dir: str | Path, tokenizer: str = "char", vocab_size: int | None = None,
                    val_fraction: float = 0.1, val_path: str | Path | None = None) -> dict:
    """Tokenize the prompt -> answer examples of a JSONL file into ``tokens.bin`` + ``offsets.npy`` +
    ``prompt_lengths.npy``: each example is its prompt, its answer and the end token. The validation split is
    ``val_path``, or else the last ``val_fraction`` of the examples."""
    files = [Path(text_path), *([Path(val_path)] if val_path else [])]
    for path in files:
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "not found"
            raise UserError(f"data file {what}: {path}; set data.text_path to a JSONL file of prompts and answers")
    if not val_path:
        check_val_fraction(val_fraction)
    options = {"tokenizer": tokenizer, "vocab_size": vocab_size, "val_fraction": val_fraction, "answers": True}
    return prepare(Path(out_dir), files, options, lambda out: _build_answers(*answer_splits(files, val_fraction), out,
                                                                            tokenizer, vocab_size))


def answer_splits(files: list[Path], val_fraction: float) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, val) examples: of the first file and the second, or the first file split by ``val_fraction``."""
    train = read_answers(files[0])
    if len(files) > 1:
        return train, read_answers(files[1])
    n_train = int(len(train) * (1 - val_fraction))
    if not 0 < n_train < len(train):
        raise UserError(f"{files[0]} has only {len(train)} example(s), too few for a train and a val split")
    return train[:n_train], train[n_train:]


def _build_answers(train: list[tuple[str, str]], val: list[tuple[str, str]], out_dir: Path, kind: str,
                   vocab_size: int | None) -> tuple[Tokenizer, dict]:
    log.info("preparing %d train and %d val prompt -> answer examples in %s", len(train), len(val), out_dir)
    tok = fit(kind, lambda: (prompt + answer + "\n" for prompt, answer in train),
              lambda: (prompt + answer for prompt, answer in train + val), vocab_size)
    if tok.eot_id is None:
        raise UserError(f"the {tok.kind} tokenizer has no end token, which answers need")
    prompts = [tok.encode(prompt) for prompt, _ in train + val]
    answers = [tok.encode(answer) + [tok.eot_id] for _, answer in train + val]
    with atomic_writer(out_dir / "tokens.bin") as f:
        for prompt, answer in zip(prompts, answers):
            np.asarray(prompt + answer, dtype=token_dtype(tok.vocab_size)).tofile(f)
    lengths = [len(prompt) + len(answer) for prompt, answer in zip(prompts, answers)]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    for name, array in (("offsets.npy", offsets), ("prompt_lengths.npy", np.array([len(p) for p in prompts]))):
        with atomic_writer(out_dir / name) as f:
            np.save(f, array)
    return tok, {"examples": len(lengths), "train_examples": len(train), "skipped_empty": 0, "tokens": int(offsets[-1])}
