"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file saeforge writes goes through here: the content is written to a temporary name in the same directory,
flushed to disk (fsync), then renamed over the target (os.replace, atomic on POSIX). On any error the temporary
file is removed and the target is left as it was. The file gets the permissions an ordinary `open` would give
it (0666 less the process umask), not mkstemp's private 0600, so a team can share stores and dashboards.
"""

from __future__ import annotations

import os
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
