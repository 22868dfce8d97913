"""A run directory has one owner at a time and is never silently overwritten.

- The owner holds ``.run.lock``, which names its process and host, from the check that runs before Hydra writes
  anything (``gpt.cli.run_directory.RunDirectory``) to its exit. A lock whose process is gone (on this host) is stale, and the next
  run takes it over; a lock of another host is left to the people who know that host, and a lock that is not one of
  ours is refused. A sweep directory is held the same way, with ``.sweep.lock``.
- A new run (not a resume, ``ckpt_path=``) does not start in a directory that holds a run: checkpoints, its
  ``metrics.csv`` or its ``result.json``. ``overwrite=true`` starts over, removing them (the checkpoint files only,
  where ``checkpoints`` is a link to another disk).
- The owner removes the half-written files (``.*.tmp``) of earlier processes that were killed while saving.
- A command refused before it trains (bad data, say) leaves no directory behind that holds only Hydra's record of
  it and its log.
"""

import atexit
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gpt import UserError
from gpt.files import remove_temporary_files

LOCK_FILE = ".run.lock"
SWEEP_LOCK_FILE = ".sweep.lock"
RUN_FILES = ("checkpoints", "metrics.csv", "result.json")
STARTING_FILES = (".hydra", "train.log", LOCK_FILE)  # what a command writes as a run starts


def remove_unstarted_run(directory: str | Path, up_to: str | Path | None = None) -> None:
    """Remove ``directory`` if it holds nothing but what Hydra and this command wrote as the command started, and
    then the directories above it, up to ``up_to``, that it leaves empty (they were made for it)."""
    directory = Path(directory)
    if not directory.is_dir() or any(path.name not in STARTING_FILES for path in directory.iterdir()):
        return
    release_lock(directory)
    shutil.rmtree(directory / ".hydra", ignore_errors=True)
    (directory / "train.log").unlink(missing_ok=True)
    path, last = directory.resolve(), Path(up_to or directory).resolve()
    while path.is_relative_to(last):
        try:
            path.rmdir()
        except OSError:  # something new came in meanwhile (or another process's lock): leave it
            return
        path = path.parent


def holder(directory: Path, name: str = LOCK_FILE) -> str | None:
    """"process P on host H" for a live lock of ``directory`` held by another process; None when it has none, its
    own, or a stale one. A lock file that is not ``PID HOST`` is refused: it says nothing about who holds it."""
    lock = directory / name
    try:
        text = lock.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UserError(f"cannot read {lock} ({e.strerror or e}); if no run uses {directory}, delete it") from None
    parts = text.split()
    if len(parts) != 2 or not parts[0].isdigit() or not 0 < int(parts[0]) < 2 ** 31:
        raise UserError(f"{lock} is not a lock this project wrote ({text.strip()[:40]!r}); if no run uses "
                        f"{directory}, delete it")
    pid, host = int(parts[0]), parts[1]
    if host == socket.gethostname() and (pid == os.getpid() or not alive(pid)):
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
    step) and a ``checkpoints`` directory without checkpoints (made, or linked to a bigger disk, for this run) hold
    nothing to keep."""
    return [name for name in RUN_FILES if (directory / name).exists() and not holds_nothing(directory / name)]


def holds_nothing(path: Path) -> bool:
    if path.name == "checkpoints":
        return path.is_dir() and not any(path.glob("*.ckpt"))
    return path.name == "metrics.csv" and path.stat().st_size < 4096 and len(path.read_text().splitlines()) <= 1


def remove_run_files(directory: Path) -> None:
    """Remove what an earlier run left (``overwrite=true``): a linked ``checkpoints`` directory stays, emptied of
    its checkpoints."""
    for name in run_files(directory):
        path = directory / name
        if name == "checkpoints":
            for checkpoint in path.glob("*.ckpt"):
                checkpoint.unlink()
            if not path.is_symlink():
                shutil.rmtree(path)
        else:
            path.unlink()


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
            remove_run_files(directory)
        yield
    finally:
        release_lock(directory)


def take_lock(directory: Path, name: str = LOCK_FILE, what: str = "run", override: str = "hydra.run.dir") -> None:
    """Create the lock file, or take over a stale one or this process's own; a live one stops with the name of its
    owner."""
    lock = directory / name
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if owner := holder(directory, name):
                raise UserError(f"{directory} is in use by another {what} ({owner}); wait for it to end, or choose "
                                f"another {override}=...") from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
        return
    raise UserError(f"could not lock {directory}: another {what} took it at the same moment; try again")


def hold_until_exit(directory: Path, name: str = LOCK_FILE, what: str = "run", override: str = "hydra.run.dir") -> None:
    """Take the lock of ``directory`` for the rest of this process."""
    take_lock(directory, name, what, override)
    atexit.register(release_lock, directory, name)


def release_lock(directory: Path, name: str = LOCK_FILE) -> None:
    lock = directory / name
    try:
        if lock.read_text().split()[0] == str(os.getpid()):
            lock.unlink()
    except (OSError, IndexError):
        pass
