"""One writer per output folder: an OS file lock that dies with the process holding it.

Every command that writes into an `--out` folder (capture, train, interpret, run, ...) holds
`one_writer(folder, command)` for as long as it writes. A second process aimed at the same folder fails at
once with `FolderInUse`, naming the folder and the holder (pid, host, start time, command line).

The lock is `fcntl.flock` on `folder/.saeforge-lock`. The kernel releases it when the holder's last file
descriptor closes, which includes kill -9, so a crashed run never leaves a lock that blocks its resume; the
file's text (who holds it) is informational only. The holder unlinks the file before releasing it; a process
that locked a file which was unlinked meanwhile sees that its inode is no longer the path's and retries, so
two holders can never coexist. flock is reliable on local filesystems; on NFS it depends on the server.

Taking the lock sweeps the temporaries that killed writers left in the folder (saeforge.atomic.sweep_stale),
so no `.tmp-*` folder or `.*.tmp` file outlives the next run.

Re-entrant within a process (`run` holds the run folder while capture and train hold their own). Under
torch.distributed only rank 0 takes the lock and every rank learns the outcome, so one run holds one lock.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from saeforge.atomic import sweep_stale

LOCK_FILE = ".saeforge-lock"

_held: dict[Path, int] = {}
_held_guard = threading.Lock()


class FolderInUse(RuntimeError):
    """Another process is writing into the folder; the message names the folder and that process."""


def _describe(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return (
            f"pid {info['pid']} on host {info['host']}, started {info['started']} "
            f"({info['command']}: {info['argv']})"
        )
    except (ValueError, KeyError, TypeError, OSError):
        return "a process that has not yet written its details"


def _acquire(lock: Path, command: str) -> int:
    """An fd holding the exclusive flock of `lock`; raises FolderInUse naming the holder."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(fd)
            os.close(fd)
            raise FolderInUse(
                f"{lock.parent} is being written by another saeforge process: {holder}. Wait for it to "
                "finish (or stop it), or choose another --out."
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder unlinked this file while we waited: lock the current one
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "argv": " ".join(sys.argv),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
    return fd


def _rank() -> tuple[int, object | None]:
    """(rank, torch.distributed) when a process group is initialised, else (0, None)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist
    return 0, None


def _missing(folder: Path) -> list[Path]:
    """`folder` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


@contextmanager
def one_writer(folder: str | Path, command: str) -> Iterator[Path]:
    """Holds the single-writer lock of `folder` (created if missing) for the block; yields the folder.

    Raises FolderInUse at once when another process holds it. The folders this call created (`folder` and any
    missing parents) are removed again on exit while nothing but the lock was written into them (a run refused
    by validation, or failing before it wrote anything, leaves no trace).
    """
    folder = Path(folder)
    key = folder.resolve()
    rank, dist = _rank()
    with _held_guard:
        if key in _held:
            _held[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield folder
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    fd, created, refused = None, [], None
    if rank == 0:
        created = _missing(folder)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = _acquire(folder / LOCK_FILE, command)
            sweep_stale(folder, LOCK_FILE)
        except FolderInUse as e:
            refused = str(e)
        except OSError as e:
            refused = f"cannot take the writer lock of {folder}: {e}; choose a writable --out"
    if dist is not None:
        shared = [refused]
        dist.broadcast_object_list(shared, src=0)
        refused = shared[0]
    if refused is not None:
        raise FolderInUse(refused)
    with _held_guard:
        _held[key] = 1
    try:
        yield folder
    finally:
        with _held_guard:
            del _held[key]
        if fd is not None:
            (folder / LOCK_FILE).unlink(missing_ok=True)
            os.close(fd)
            for made in created:  # deepest first; stops at the first that holds something
                if any(made.iterdir()):
                    break
                made.rmdir()
