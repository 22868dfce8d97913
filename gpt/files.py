"""Files that are never seen half-written, and work that one process does while the others wait."""

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock


@contextmanager
def atomic_writer(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through: a temporary file beside it, flushed to disk and renamed into place
    when the block ends without an error. A reader, or a process killed while writing, finds the old file or the
    new one, never a part; a failed write leaves the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # beside it: a rename within one file system is atomic
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # where the temporary file could not be made: the error that said so is the one to see
            pass


@contextmanager
def replaced_directory(path: str | Path) -> Iterator[Path]:
    """A new directory to write the files of ``path`` into, beside it: when the block ends without an error it
    takes the place of ``path`` whole (the old one is renamed aside, then removed); an error or a kill before then
    leaves ``path`` as it was."""
    path = Path(path)
    new, old = (path.with_name(f".{path.name}.{os.getpid()}.{what}") for what in ("new", "old"))
    new.mkdir(parents=True)
    try:
        yield new
        if path.exists():
            os.rename(path, old)
        try:
            os.rename(new, path)
        except OSError:
            if old.exists():
                os.rename(old, path)
            raise
    finally:
        shutil.rmtree(new, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def first_missing(directory: Path) -> Path | None:
    """The outermost of ``directory`` and its parents that does not exist yet: what making it would make."""
    missing = None
    for path in (directory, *directory.parents):
        if path.exists():
            return missing
        missing = path
    return missing


def remove_temporary_files(directory: Path) -> None:
    """The half-written files of ``atomic_writer`` that processes killed while writing left in ``directory``; call
    it while owning the directory."""
    for leftover in directory.glob(".*.tmp"):
        leftover.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_writer(path) as f:
        f.write(text.encode("utf-8"))


@contextmanager
def exclusive(lock_file: str | Path) -> Iterator[None]:
    """Hold ``lock_file``: processes that start together (torchrun, SLURM, several nodes on one file system) take
    turns, so that one of them does the work and the others find it done."""
    with FileLock(lock_file):
        yield
