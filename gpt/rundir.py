"""A run directory has one owner at a time and is never silently overwritten.

- The owner holds ``.run.lock``, which names its process and host. A lock whose process is gone (on this host)
  is stale, and the next run takes it over; a lock of another host is left to the people who know that host.
- A new run (not a resume, ``ckpt_path=``) does not start in a directory that holds a run: its checkpoints, its
  ``metrics.csv`` or its ``result.json``. ``overwrite=true`` starts over, removing them.
- The owner removes the half-written files (``.*.tmp``) of earlier processes that were killed while saving.
- A command refused before it trains (bad data, say) leaves no directory behind that holds only Hydra's record of
  it and its log.
"""

import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gpt import UserError
from gpt.files import remove_temporary_files

LOCK_FILE = ".run.lock"
RUN_FILES = ("checkpoints", "metrics.csv", "result.json")
STARTING_FILES = (".hydra", "train.log")  # what Hydra writes as a run starts


def remove_unstarted_run(directory: str | Path) -> None:
    """Remove ``directory`` if it holds nothing but what Hydra wrote as the command started."""
    directory = Path(directory)
    if not directory.is_dir() or any(path.name not in STARTING_FILES for path in directory.iterdir()):
        return
    shutil.rmtree(directory / ".hydra", ignore_errors=True)
    (directory / "train.log").unlink(missing_ok=True)
    try:
        directory.rmdir()
    except OSError:  # something new came in meanwhile: leave it
        pass


def holder(directory: Path) -> str | None:
    """"process P on host H" for a live lock of ``directory`` held by another process; None when it has none, its
    own, or a stale one."""
    try:
        pid, host = (directory / LOCK_FILE).read_text().split()
    except (OSError, ValueError):
        return None
    if host == socket.gethostname() and (int(pid) == os.getpid() or not alive(int(pid))):
        return None
    return f"process {pid} on host {host}"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a process of another user
    return True


def run_files(directory: Path) -> list[str]:
    """What an earlier run left there; a ``metrics.csv`` of its header alone (a run stopped before its first logged
    step) holds nothing to keep."""
    return [name for name in RUN_FILES if (directory / name).exists() and not header_only(directory / name)]


def header_only(path: Path) -> bool:
    return path.name == "metrics.csv" and path.stat().st_size < 4096 and len(path.read_text().splitlines()) <= 1


def check_run_dir(directory: str | Path, resuming: bool, overwrite: bool) -> None:
    """Stop unless a run may write in ``directory``: no live run holds it, and a new run finds no earlier one
    there (unless it is to overwrite it)."""
    directory = Path(directory)
    if owner := holder(directory):
        raise UserError(f"{directory} is in use by another run ({owner}); wait for it to end, or choose another "
                        "hydra.run.dir=...")
    if not resuming and not overwrite and (found := run_files(directory)):
        raise UserError(f"{directory} already holds a run ({', '.join(found)}); resume it with ckpt_path=last, or "
                        "start over with overwrite=true (its checkpoints and logs are removed)")


@contextmanager
def owned(directory: str | Path, resuming: bool, overwrite: bool) -> Iterator[None]:
    """Own ``directory`` while the block runs: checked, locked, cleaned of half-written files, and emptied of the
    earlier run's files with ``overwrite``; the lock is released at the end."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    take_lock(directory)
    try:
        check_run_dir(directory, resuming, overwrite)
        for written in (directory, directory / "checkpoints"):
            remove_temporary_files(written)
        if overwrite and not resuming:
            for path in (directory / name for name in run_files(directory)):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        yield
    finally:
        release_lock(directory)


def take_lock(directory: Path) -> None:
    """Create the lock file, or take over a stale one; a live one stops with the name of its owner."""
    lock = directory / LOCK_FILE
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if owner := holder(directory):
                raise UserError(f"{directory} is in use by another run ({owner}); wait for it to end, or choose "
                                "another hydra.run.dir=...") from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
        return
    raise UserError(f"could not lock {directory}: another run took it at the same moment; try again")


def release_lock(directory: Path) -> None:
    lock = directory / LOCK_FILE
    try:
        if lock.read_text().split()[0] == str(os.getpid()):
            lock.unlink()
    except (OSError, IndexError):
        pass
