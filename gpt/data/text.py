"""Reading UTF-8 text: a file or a directory of ``*.txt`` files, in chunks (files larger than memory work), as
documents or as examples (lines, paragraphs or documents). No torch here: the example kinds are checked before any
library loads."""

from collections.abc import Iterable, Iterator
from pathlib import Path

from gpt import UserError
from gpt.data.bpe import ENDOFTEXT

CHUNK_CHARS = 1 << 20
EXAMPLES = ("line", "paragraph", "document")  # what data.example may be


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


def describe(text_path: Path, files: list[Path]) -> str:
    if text_path.is_dir():
        return f"{text_path}: {len(files)} *.txt file(s) found in it and its subdirectories, one document each"
    return str(text_path)
