"""Corpora at scale (``data=corpus``): documents streamed from text files, JSONL (also ``.gz``, ``.zst``), parquet
(by row group), a local Hugging Face dataset (``save_to_disk``) or one named on the Hub (streamed), filtered and
deduplicated in one pass, tokenized by every core, into numbered token shards that training samples as one stream.

- Each document ends with the end token. Every ``1 / val_fraction``-th document of the source (the 200th, 400th,
  ... by default), if kept, goes to the validation split: held out by document, never cut mid-document, spread
  over the corpus, and the same whatever the filters remove elsewhere.
- The main process reads, filters and deduplicates, in order, and hands batches of about a MB of documents to the
  encoding processes, whose tokens come back in order: the files are byte-identical whatever ``num_proc``. They
  encode with tiktoken's ``encode_to_numpy``, as fast as its ``encode_ordinary_batch`` in one thread but with the
  tokens in an array rather than a Python int each (``bench/bench_prepare.py``); text that reads ``<|endoftext|>``
  stays text, as ``encode_ordinary`` keeps it.
- Shards hold about ``shard_tokens`` tokens each (``train-00000.bin``, ...; ``val-00000.bin``, ...), their sizes in
  ``meta.json``. A corpus of one shard keeps the single ``train.bin`` / ``val.bin`` of ``data=text``.
- After each train shard, ``progress.json`` records how many documents are done: an interrupted preparation
  resumes from its last finished shard (its filters and deduplication see the finished documents again).
- ``dedup``: ``exact`` drops a document whose normalised text (lower case, whitespace collapsed) was seen;
  ``minhash`` also drops near-duplicates: MinHash of word 5-grams, 14 bands of 8 rows as FineWeb's datatrove uses,
  through the ``datasketch`` library (a well-kept MinHash LSH, where datatrove's pipeline would take over the whole
  preparation), a candidate kept as a duplicate when its estimated Jaccard similarity is at least 0.7.
"""

import gzip
import hashlib
import importlib
import json
import logging
import os
import zlib
from collections import deque
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gpt import UserError
from gpt.data.store import (PreparedData, check_val_fraction, encoding_processes, file_stats, fit, prepare,
                            prepared_name, token_dtype)
from gpt.data.tokenizers import TiktokenTokenizer, Tokenizer
from gpt.data.windows import WindowsDataModule
from gpt.files import atomic_write_text, atomic_writer

log = logging.getLogger(__name__)

SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".jsonl.zst", ".txt")
DEDUP = ("none", "exact", "minhash")
BATCH_CHARS = 1 << 20  # the text handed to an encoding process at a time (at most a shard's tokens)
PROGRESS = "progress.json"
MAX_TEXT_FILE = 64 << 20  # a .txt file is one document: one that needs more memory than this is refused


class CorpusDataModule(WindowsDataModule):
    """Random training windows and fixed validation windows over a corpus prepared in shards (the module's
    docstring).

    - ``text_path``: a file or directory of ``*.parquet``, ``*.jsonl`` (``.gz``, ``.zst``) or ``*.txt`` files, or a
      directory that ``datasets``' ``save_to_disk`` wrote (null with ``dataset``);
    - ``dataset``: a dataset on the Hugging Face Hub, streamed (``dataset_config``, ``dataset_split``);
    - ``text_field``: the column or key that holds each document's text;
    - ``dedup``: none, exact or minhash; ``min_chars``, ``max_non_alpha``: drop documents shorter than this, or
      with a larger share of characters that are neither letters nor spaces (off by default);
    - ``shard_tokens``: tokens per shard; ``val_fraction``: the share of documents held out."""

    def __init__(self, *, text_path: str | None = None, dataset: str | None = None, dataset_config: str | None = None,
                 dataset_split: str = "train", text_field: str = "text", dedup: str = "none", min_chars: int = 0,
                 max_non_alpha: float | None = None, shard_tokens: int = 100_000_000, val_fraction: float = 0.005,
                 **options):
        if (text_path is None) == (dataset is None):
            raise UserError("data=corpus reads data.text_path (local files) or data.dataset (a Hub dataset): give one")
        if dedup not in DEDUP:
            raise UserError(f"data.dedup={dedup!r} is not an option; choose one of {', '.join(DEDUP)}")
        super().__init__(text_path=text_path or dataset, val_fraction=val_fraction, **options)
        self.source = Source(Path(text_path) if text_path else None, dataset, dataset_config, dataset_split,
                             text_field)
        self.filters = {"dedup": dedup, "min_chars": min_chars, "max_non_alpha": max_non_alpha}
        self.shard_tokens = shard_tokens

    def prepared_name(self) -> str:
        name = prepared_name(self.text_path, self.tokenizer_kind, self.vocab_size)
        return f"{name}-corpus-{hashlib.sha1(json.dumps(self.options()).encode()).hexdigest()[:8]}"

    def describe_source(self) -> str:
        return self.source.describe()

    def options(self) -> dict:
        return {"tokenizer": self.tokenizer_kind, "vocab_size": self.vocab_size, "val_fraction": self.val_fraction,
                "source": self.source.options(), **self.filters, "shard_tokens": self.shard_tokens}

    def prepare(self) -> dict:
        check_val_fraction(self.val_fraction)
        files = self.source.files()
        return prepare(self.data_dir, files, self.options(), lambda out: build_corpus(self, out), resumable=True)


# --------------------------------------------------------------------------- reading documents


@dataclass
class Source:
    """Where the documents come from, and how to read them one by one."""

    path: Path | None
    dataset: str | None = None
    dataset_config: str | None = None
    dataset_split: str = "train"
    text_field: str = "text"

    def options(self) -> dict:
        return {"path": str(self.path.resolve()) if self.path else None, "dataset": self.dataset,
                "config": self.dataset_config, "split": self.dataset_split, "text_field": self.text_field}

    def describe(self) -> str:
        return f"{self.dataset} (the Hub, streamed)" if self.dataset else str(self.path)

    @property
    def is_saved_dataset(self) -> bool:
        return self.path is not None and self.path.is_dir() and any(
            (self.path / name).is_file() for name in ("dataset_dict.json", "dataset_info.json", "state.json"))

    def files(self) -> list[Path]:
        """The files read, in order (a saved dataset: all of its files, which decide whether it changed)."""
        if self.dataset:
            return []
        if not self.path.exists():
            raise UserError(f"data.text_path={self.path} does not exist; give a file or directory of "
                            f"{', '.join(SUFFIXES)} files, or a directory written by datasets' save_to_disk")
        if self.is_saved_dataset:
            return sorted(p for p in self.path.rglob("*") if p.is_file())
        files = [self.path] if self.path.is_file() else sorted(
            p for p in self.path.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))
        if not files:
            raise UserError(f"no {', '.join(SUFFIXES)} files in {self.path} or below it")
        if unknown := [p for p in files if not p.name.endswith(SUFFIXES)]:
            raise UserError(f"{unknown[0]}: not a format data=corpus reads; give {', '.join(SUFFIXES)} files")
        return files

    def documents(self) -> Iterator[tuple[str, int]]:
        """(document's text, bytes of the source read so far)."""
        if self.dataset or self.is_saved_dataset:
            yield from self.dataset_documents()
            return
        done = 0
        for path in self.files():
            for text, position in reader_of(path)(path, self.text_field):
                yield text, done + position
            done += path.stat().st_size

    def works(self, filters: "Filters", batch_chars: int, done: int) -> Iterator["Work"]:
        """The corpus in works for the encoding processes, from its document ``done`` on: the documents before it
        are read again only where a deduplication must know them. Without deduplication, parquet row groups are
        read by the encoding processes themselves; the rest is read here, in works of ``batch_chars``."""
        if filters.dedup != "none" or self.dataset or self.is_saved_dataset:
            yield from batched(self.documents(), filters, batch_chars, 0, done)
            return
        index, offset = 0, 0
        for path in self.files():
            size = path.stat().st_size
            if path.name.endswith(".parquet"):
                groups = row_group_sizes(path, self.text_field)
                for group, rows in enumerate(groups):
                    if index + rows > done:
                        yield Work(index, rows, offset + size * (group + 1) // len(groups), path=path, group=group)
                    index += rows
            else:
                documents = ((text, offset + position) for text, position in reader_of(path)(path, self.text_field))
                index = yield from batched(documents, filters, batch_chars, index, done)
            offset += size

    def dataset_documents(self) -> Iterator[tuple[str, int]]:
        datasets = extra("datasets")
        try:
            if self.dataset:
                data = datasets.load_dataset(self.dataset, self.dataset_config, split=self.dataset_split,
                                             streaming=True)
            else:
                data = datasets.load_from_disk(str(self.path))
                if isinstance(data, datasets.DatasetDict):
                    data = data[self.dataset_split]
        except KeyError:
            raise UserError(f"{self.path} has no split {self.dataset_split!r}; set data.dataset_split") from None
        except Exception as e:  # noqa: BLE001 (datasets raises many kinds: connection, missing, offline)
            raise UserError(f"cannot load dataset {self.dataset or self.path}: {type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200] if str(e) else ''}; offline, save it with "
                            "datasets' save_to_disk where there is a network and give data.text_path=<that "
                            "directory>") from None
        columns = data.column_names  # None for a streamed dataset whose features are not declared
        if columns and self.text_field not in columns:
            raise UserError(f"{self.describe()} has no column {self.text_field!r} (its columns: "
                            f"{', '.join(columns)}); set data.text_field")
        total = sum(p.stat().st_size for p in self.files()) if self.path else 0
        rows = None if self.dataset else len(data)
        for i, row in enumerate(data.select_columns([self.text_field]) if columns else data):
            if self.text_field not in row:
                raise UserError(f"{self.describe()}, row {i}: no {self.text_field!r}; set data.text_field")
            yield checked_text(row[self.text_field], f"{self.describe()}, row {i}", self.text_field), \
                (total * (i + 1) // rows if rows else 0)


def batched(documents: Iterator[tuple[str, int]], filters: "Filters", batch_chars: int, first: int, done: int
            ) -> Generator["Work", None, int]:
    """Works of the documents (numbered from ``first``) that ``filters`` keep, about ``batch_chars`` characters
    each; documents before ``done`` only pass through ``filters``. Returns the number after the last document."""
    work, size, before, count = None, 0, {}, 0
    for count, (text, position) in enumerate(documents, start=1):
        index = first + count - 1
        if index < done:
            filters.keep(text)
            continue
        if work is None:
            work, size, before = Work(index, 0, position), 0, dict(filters.removed)
        work.count, work.position = work.count + 1, position
        if filters.keep(text):
            work.texts.append(text)
            work.indices.append(index)
            size += len(text)
        if size >= batch_chars:
            work.removed = {reason: n - before[reason] for reason, n in filters.removed.items()}
            yield work
            work = None
    if work is not None:
        work.removed = {reason: n - before[reason] for reason, n in filters.removed.items()}
        yield work
    return first + count


def reader_of(path: Path):
    """The function that reads the documents of ``path`` by its suffix: (text, bytes of the file read so far)."""
    return read_parquet if path.name.endswith(".parquet") else read_text if path.suffix == ".txt" else read_jsonl


def extra(module: str):
    """A library of the ``corpus`` extra, or one line that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"data=corpus needs {module.split('.')[0]} for this: pip install -e '.[corpus]'") from None


def checked_text(text, where: str, field_name: str) -> str:
    if not isinstance(text, str):
        raise UserError(f"{where}: its {field_name!r} is {type(text).__name__}, not a text")
    return text


def read_text(path: Path, text_field: str) -> Iterator[tuple[str, int]]:
    """A text file is one document."""
    if path.stat().st_size > MAX_TEXT_FILE:
        raise UserError(f"{path} is {path.stat().st_size:,} bytes: data=corpus reads a .txt file as one document, of "
                        f"at most {MAX_TEXT_FILE:,}; split it into documents, or train on it with data=text")
    try:
        yield path.read_text(encoding="utf-8"), path.stat().st_size
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (bad byte at offset {e.start}); convert it with iconv -t utf-8") \
            from None


def read_jsonl(path: Path, text_field: str) -> Iterator[tuple[str, int]]:
    """Each line's ``text_field``; ``.gz`` and ``.zst`` are decompressed as they are read."""
    with open(path, "rb") as raw:
        try:
            for line_number, line in enumerate(lines_of(decompressed(raw, path.suffix)), start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as e:
                    raise UserError(f"{path}, line {line_number}: not a JSON record ({e})") from None
                if not isinstance(record, dict) or text_field not in record:
                    raise UserError(f"{path}, line {line_number}: no {text_field!r} key; set data.text_field")
                yield checked_text(record[text_field], f"{path}, line {line_number}", text_field), raw.tell()
        except (EOFError, OSError, zlib.error, CutShort) as e:
            raise UserError(f"{path} is cut short or not what its name says ({type(e).__name__}: {e}); download or "
                            "compress it again") from None


class CutShort(Exception):
    """A compressed file that ends inside a frame."""


def decompressed(raw, suffix: str) -> Iterator[bytes]:
    """The bytes of a file, decompressed by its suffix (``.gz``, ``.zst``), in blocks."""
    if suffix == ".gz":
        stream = gzip.GzipFile(fileobj=raw)  # raises EOFError where the data ends early
        while block := stream.read(1 << 20):
            yield block
        return
    if suffix != ".zst":
        while block := raw.read(1 << 20):
            yield block
        return
    zstandard, frame = extra("zstandard"), None  # a file may hold several frames, one after another
    while data := raw.read(1 << 20):
        while data:
            frame = frame or zstandard.ZstdDecompressor().decompressobj()
            try:
                yield frame.decompress(data)
            except zstandard.ZstdError as e:
                raise CutShort(str(e)) from None
            data, frame = (frame.unused_data, None) if frame.eof else (b"", frame)
    if frame is not None:
        raise CutShort("the last zstd frame ends early")


def lines_of(blocks: Iterator[bytes]) -> Iterator[bytes]:
    rest = b""
    for block in blocks:
        *lines, rest = (rest + block).split(b"\n")
        yield from lines
    if rest:
        yield rest


def read_parquet(path: Path, text_field: str) -> Iterator[tuple[str, int]]:
    """The ``text_field`` column, a row group at a time."""
    groups, size = len(row_group_sizes(path, text_field)), path.stat().st_size
    for group in range(groups):
        for text in read_row_group(path, group, text_field):
            yield text, size * (group + 1) // groups


def row_group_sizes(path: Path, text_field: str) -> list[int]:
    """The rows of each row group of a parquet file that has the column ``text_field`` (its metadata only)."""
    try:
        parquet = extra("pyarrow.parquet").ParquetFile(path)
    except Exception as e:  # noqa: BLE001 (pyarrow's errors are its own)
        raise UserError(f"{path} is not a readable parquet file ({type(e).__name__}: {e})") from None
    columns = parquet.schema_arrow.names
    if text_field not in columns:
        raise UserError(f"{path} has no column {text_field!r} (its columns: {', '.join(columns)}); set "
                        "data.text_field")
    return [parquet.metadata.row_group(group).num_rows for group in range(parquet.num_row_groups)]


def read_row_group(path: Path, group: int, text_field: str) -> list[str]:
    parquet = extra("pyarrow.parquet")
    try:
        table = parquet.ParquetFile(path).read_row_group(group, columns=[text_field])
    except Exception as e:  # noqa: BLE001 (pyarrow's errors are its own)
        raise UserError(f"{path}, row group {group}: cannot be read ({type(e).__name__}: {e}); download it again") \
            from None
    texts = table.column(0).to_pylist()
    if not all(isinstance(text, str) for text in texts):  # the first that is not, named
        row = next(row for row, text in enumerate(texts) if not isinstance(text, str))
        checked_text(texts[row], f"{path}, row group {group}, row {row}", text_field)
    return texts


# --------------------------------------------------------------------------- filters and deduplication


@dataclass
class Filters:
    """Which documents are kept, and how many were removed and why."""

    dedup: str = "none"
    min_chars: int = 0
    max_non_alpha: float | None = None
    removed: dict = field(default_factory=lambda: {"exact_duplicates": 0, "near_duplicates": 0, "short": 0,
                                                   "non_alphabetic": 0})

    def __post_init__(self):
        self.seen: set[bytes] = set()  # the digests of the kept documents' normalised texts
        self.signatures: list = []  # the kept documents' MinHash values, by their key in the LSH index
        if self.dedup == "minhash":
            self.lsh = extra("datasketch").MinHashLSH(num_perm=NUM_PERM, params=(BANDS, ROWS))

    def keep(self, text: str) -> bool:
        if len(text) < self.min_chars:
            return self.drop("short")
        if self.max_non_alpha is not None and text and non_alphabetic_share(text) > self.max_non_alpha:
            return self.drop("non_alphabetic")
        if self.dedup != "none":
            digest = hashlib.blake2b(" ".join(text.lower().split()).encode(), digest_size=16).digest()
            if digest in self.seen:
                return self.drop("exact_duplicates")
            if self.dedup == "minhash" and self.near_duplicate(text):
                return self.drop("near_duplicates")
            self.seen.add(digest)
        return True

    def drop(self, reason: str) -> bool:
        self.removed[reason] += 1
        return False

    def near_duplicate(self, text: str) -> bool:
        """Whether a kept document is as similar as ``SIMILAR`` by MinHash; if not, this one is remembered."""
        signature = minhash(text)
        values = signature.hashvalues
        if any(np.mean(self.signatures[key] == values) >= SIMILAR for key in self.lsh.query(signature)):
            return True  # the share of equal hash values estimates the Jaccard similarity
        self.lsh.insert(len(self.signatures), signature)
        self.signatures.append(values.copy())
        return False


NUM_PERM, BANDS, ROWS, SIMILAR = 112, 14, 8, 0.7


def shingles(text: str) -> set[str]:
    """The text's word 5-grams, lower case."""
    words = text.lower().split()
    return {" ".join(words[i:i + 5]) for i in range(max(1, len(words) - 4))}


def minhash(text: str):
    signature = extra("datasketch").MinHash(num_perm=NUM_PERM, seed=1)
    signature.update_batch([shingle.encode() for shingle in shingles(text)])
    return signature


def non_alphabetic_share(text: str) -> float:
    return sum(not (c.isalpha() or c.isspace()) for c in text) / len(text)


# --------------------------------------------------------------------------- encoding and shards


@dataclass
class Work:
    """A part of the corpus for an encoding process: the documents ``first`` to ``first + count`` of the source.
    Either the main process read them (``texts``: those it kept, with their ``indices``; ``removed``: what it
    removed), or the encoding process reads them itself, as a parquet row group (``path``, ``group``) when no
    deduplication needs to see every document in one place."""

    first: int
    count: int
    position: int  # bytes of the source read once it is done
    texts: list[str] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    removed: dict = field(default_factory=dict)
    path: Path | None = None
    group: int = 0


@dataclass
class Encoded:
    """What an encoding process gives back: the tokens of the kept documents, each followed by the end token, of
    each split; how many it kept and their characters; what it removed."""

    train: bytes
    val: bytes
    kept: int
    characters: int
    removed: dict


# the encoding processes' tokenizer and settings, set before they are forked: they inherit them
_tokenizer: Tokenizer | None = None
_settings: dict = {}


def _encode(work: Work) -> Encoded:
    texts, indices, removed = work.texts, work.indices, {}
    if work.path is not None:  # a row group: read and filtered here
        filters = Filters(min_chars=_settings["min_chars"], max_non_alpha=_settings["max_non_alpha"])  # no dedup
        rows = read_row_group(work.path, work.group, _settings["text_field"])
        kept = [(text, work.first + row) for row, text in enumerate(rows) if filters.keep(text)]
        texts, indices, removed = [text for text, _ in kept], [index for _, index in kept], filters.removed
    if isinstance(_tokenizer, TiktokenTokenizer):  # an array per text: no Python int per token
        ids = [_tokenizer.encoding.encode_to_numpy(text, disallowed_special=()) for text in texts]
    else:
        ids = [np.asarray(_tokenizer.encode(text), dtype=np.uint32) for text in texts]
    end = np.array([] if _tokenizer.eot_id is None else [_tokenizer.eot_id], dtype=np.uint32)
    splits = ([], [])
    for document, index in zip(ids, indices):
        splits[held_out(index, _settings["val_every"])].extend((document, end))
    train, val = (np.concatenate(part).astype(_settings["dtype"]).tobytes() if part else b"" for part in splits)
    return Encoded(train, val, len(texts), sum(map(len, texts)), removed)


def held_out(index: int, val_every: int) -> bool:
    """Whether the source's document ``index`` belongs to the validation split: the last of every ``val_every``."""
    return index % val_every == val_every - 1


def encoded_in_order(works: Iterator[Work], num_proc: int) -> Iterator[tuple[Work, Encoded]]:
    """(work, ``_encode(work)``) of each work, in order, by ``num_proc`` processes with at most four works each in
    flight (two kept them waiting for the next one now and then), so that memory stays bounded whatever the
    corpus."""
    if num_proc == 1:
        yield from ((work, _encode(work)) for work in works)
        return
    with encoding_processes(num_proc) as pool:
        pending = deque()
        for work in works:
            pending.append((work, pool.submit(_encode, work)))
            if len(pending) >= 4 * num_proc:
                work, result = pending.popleft()
                yield work, result.result()
        while pending:
            work, result = pending.popleft()
            yield work, result.result()


class Shards:
    """Token shards of a split: ``<split>-00000.bin``, ... of about ``shard_tokens`` tokens each, each written to a
    temporary file and named once whole."""

    def __init__(self, data: PreparedData, split: str, shard_tokens: int, dtype: np.dtype, done: list[int]):
        self.data, self.split, self.shard_tokens, self.itemsize = data, split, shard_tokens, dtype.itemsize
        self.done, self.current, self.writer, self.file = list(done), 0, None, None

    def write(self, tokens: bytes) -> None:
        if not tokens:
            return
        if self.file is None:
            self.writer = atomic_writer(self.data.shard_path(self.split, len(self.done)))
            self.file = self.writer.__enter__()
        self.file.write(tokens)
        self.current += len(tokens) // self.itemsize

    @property
    def full(self) -> bool:
        return self.current >= self.shard_tokens

    def finish(self) -> None:
        """The shard being written is done (if it holds anything)."""
        if self.file is not None:
            self.writer.__exit__(None, None, None)
            self.done.append(self.current)
            self.current, self.writer, self.file = 0, None, None

    def abandon(self) -> None:
        if self.file is not None:
            self.writer.__exit__(RuntimeError, RuntimeError("abandoned"), None)


def build_corpus(module: CorpusDataModule, out_dir: Path) -> tuple[Tokenizer, dict]:
    global _tokenizer
    source, data, val_every = module.source, PreparedData(out_dir), max(2, round(1 / module.val_fraction))
    _tokenizer = fit(module.tokenizer_kind,
                     lambda: (text for i, (text, _) in enumerate(source.documents()) if not held_out(i, val_every)),
                     lambda: (text for text, _ in source.documents()), module.vocab_size)
    dtype, files = token_dtype(_tokenizer.vocab_size), source.files()
    _settings.update(val_every=val_every, dtype=dtype, text_field=source.text_field, **module.filters)
    done = read_progress(out_dir, module.options(), files)
    if not done:  # a fresh start: the token files of an earlier attempt go
        for stale in [*out_dir.glob("train*.bin"), *out_dir.glob("val*.bin")]:
            stale.unlink()
    shards = {split: Shards(data, split, module.shard_tokens, dtype, done.get(f"{split}_shards", []))
              for split in ("train", "val")}
    counts = done.get("counts", {"documents": 0, "kept": 0, "characters": 0, "removed": Filters().removed})
    total = sum(p.stat().st_size for p in files)
    log.info("preparing %s (%s bytes) in %s", source.describe(), f"{total:,}", out_dir)
    if done:
        log.info("resuming %s after its shard %d: %s documents done", out_dir, len(shards["train"].done) - 1,
                 f"{counts['documents']:,}")
    progress = tqdm(total=total or None, unit="B", unit_scale=True, desc=f"preparing ({_tokenizer.kind})",
                    disable=total < BATCH_CHARS)
    works = source.works(Filters(**module.filters), min(BATCH_CHARS, module.shard_tokens), counts["documents"])
    try:
        with progress:
            for work, encoded in encoded_in_order(works, module.num_proc or os.cpu_count() or 1):
                progress.update(work.position - progress.n)
                counts["documents"] = work.first + work.count
                counts["kept"] += encoded.kept
                counts["characters"] += encoded.characters
                for removed in (work.removed, encoded.removed):
                    for reason, n in removed.items():
                        counts["removed"][reason] += n
                shards["train"].write(encoded.train)
                shards["val"].write(encoded.val)
                if shards["train"].full:  # a shard ends after the work that fills it
                    for split in shards.values():
                        split.finish()
                    write_progress(out_dir, module.options(), files, counts, shards)
    except BaseException:
        for split in shards.values():
            split.abandon()
        raise
    for split in shards.values():
        split.finish()
    removed = describe_removed(counts["removed"])
    if not shards["train"].done:
        raise UserError(f"no documents left in {source.describe()} after filtering ({counts['documents']:,} read, "
                        f"removed: {removed}); loosen data.min_chars or data.max_non_alpha, or give more data")
    if not shards["val"].done:
        raise UserError(f"{source.describe()} has {counts['kept']} document(s) kept: too few to hold out one with "
                        f"data.val_fraction={module.val_fraction}; raise it or give more documents")
    fields = finish_layout(data, shards)
    log.info("%s: %s documents read, %s kept (%s characters), %s train and %s val tokens in %d + %d shard(s); "
             "removed: %s", source.describe(), f"{counts['documents']:,}", f"{counts['kept']:,}",
             f"{counts['characters']:,}", f"{fields['train_tokens']:,}", f"{fields['val_tokens']:,}",
             len(shards["train"].done), len(shards["val"].done), removed)
    (out_dir / PROGRESS).unlink(missing_ok=True)
    return _tokenizer, {**fields, "documents": counts["documents"], "kept_documents": counts["kept"],
                        "characters": counts["characters"], "removed": counts["removed"]}


def finish_layout(data: PreparedData, shards: dict) -> dict:
    """The token counts of the meta; a corpus of one train shard becomes ``train.bin`` and ``val.bin``."""
    fields = {f"{split}_tokens": sum(s.done) for split, s in shards.items()}
    if len(shards["train"].done) == 1:
        for split, s in shards.items():
            for i in range(1, len(s.done)):  # one val shard per train shard: several merge into one file
                with open(data.shard_path(split, 0), "ab") as first, open(data.shard_path(split, i), "rb") as f:
                    first.write(f.read())
                data.shard_path(split, i).unlink()
            os.replace(data.shard_path(split, 0), data.split_path(split))
        return fields
    return {**fields, **{f"{split}_shards": s.done for split, s in shards.items()}}


def describe_removed(removed: dict) -> str:
    return ", ".join(f"{count:,} {reason.replace('_', ' ')}" for reason, count in removed.items()) or "none"


def read_progress(out_dir: Path, options: dict, files: list[Path]) -> dict:
    """What an interrupted preparation of the same source and options finished, or {}."""
    try:
        progress = json.loads((out_dir / PROGRESS).read_text())
    except (OSError, ValueError):
        return {}
    data = PreparedData(out_dir)
    whole = all(data.shard_path(split, i).is_file() for split in ("train", "val")
                for i in range(len(progress.get(f"{split}_shards", []))))
    same = progress.get("options") == options and progress.get("files") == file_stats(files)
    return progress if same and whole and isinstance(progress.get("counts"), dict) else {}


def write_progress(out_dir: Path, options: dict, files: list[Path], counts: dict, shards: dict) -> None:
    atomic_write_text(out_dir / PROGRESS, json.dumps({"options": options, "files": file_stats(files), "counts": counts,
                                                     **{f"{split}_shards": s.done for split, s in shards.items()}}))
