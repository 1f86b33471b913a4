"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file saeforge writes goes through here: the content is written to a temporary name in the same directory,
flushed to disk (fsync), then renamed over the target (os.replace, atomic on POSIX). On any error the temporary
file is removed and the target is left as it was. The file gets the permissions an ordinary `open` would give
it (0666 less the process umask), not mkstemp's private 0600, so a team can share stores and dashboards.

A writer killed mid-write (kill -9, power loss) leaves its temporary behind: a file `.NAME.XXXX.tmp`, or a
checkpoint directory `.tmp-step_N-PID` / `.old-step_N-PID` (saeforge.train.checkpoint). `sweep_stale` removes
them; `saeforge.lock.one_writer` calls it when it takes a folder's lock, when no other writer can be using them.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Makes a rename inside directory `path` durable (best effort where directories cannot be opened)."""
    try:
        _fsync_file(path)
    except OSError:
        pass


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; on normal exit it is fsynced and renamed onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    try:
        yield Path(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_with(path: str | Path, write: Callable[[str], object]) -> Path:
    """Calls `write(tmp)` to fill a temporary file, then moves it onto `path` atomically. Returns `path`."""
    with atomic_path(path) as tmp:
        write(str(tmp))
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Writes `text` (UTF-8) to `path` atomically. Returns `path`."""
    return write_with(path, lambda p: Path(p).write_text(text, encoding="utf-8"))


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Writes `data` to `path` atomically. Returns `path`."""
    return write_with(path, lambda p: Path(p).write_bytes(data))


TEMP_DIR_PREFIXES = (".tmp-", ".old-")


def _held_elsewhere(lock: Path) -> bool:
    """Whether another process holds the writer lock file `lock` (saeforge.lock) right now."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def sweep_stale(folder: str | Path, lock_name: str) -> list[Path]:
    """Removes the temporaries that dead writers left anywhere under `folder` and returns them.

    Call it only while holding `folder`'s writer lock (file `lock_name`): then no live writer of this folder
    exists. A subfolder whose own lock another process holds is left alone, with everything under it.
    """
    removed = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        if here != Path(folder) and lock_name in files and _held_elsewhere(here / lock_name):
            dirs.clear()
            continue
        for d in [d for d in dirs if d.startswith(TEMP_DIR_PREFIXES)]:
            shutil.rmtree(here / d, ignore_errors=True)
            dirs.remove(d)
            removed.append(here / d)
        for f in files:
            if f.startswith(".") and f.endswith(".tmp"):
                (here / f).unlink(missing_ok=True)
                removed.append(here / f)
    return removed
