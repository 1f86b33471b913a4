"""The audit log: one JSON record per request, hash-chained, rotated by size, durable before the response.

Layout of the `--audit-log` folder: `audit-000001.jsonl`, `audit-000002.jsonl`, ... (one record per line) and
`HEAD.json` (the last durable record's seq, hash and file, replaced atomically after every commit).

Each record carries `seq` (0, 1, 2, ... across files), `prev` (the previous record's `hash`; 64 zeros for the
first) and `hash` = sha256 of the record's canonical JSON without `hash` (sorted keys, no spaces, UTF-8). So
  - editing a record changes its hash (or, if the hash is recomputed, breaks the next record's `prev`);
  - deleting records leaves a gap in `seq`; reordering makes `seq` run backwards;
  - cutting records off the end leaves the log shorter than HEAD.json says.
The chain continues across rotated files: the first record of a new file holds the last hash of the previous.

Durability: the writer thread takes every record queued within `max_delay_s` of the first (group commit),
writes them, fsyncs the file, then updates HEAD.json; only then are the submitters' futures resolved, and the
server returns a response only after its record's future resolved. A crash can therefore tear at most the
records of one group, at the very end of the newest file: `verify` reports that as a warning, and opening the
log again cuts the torn tail off before appending.
"""

from __future__ import annotations

import hashlib
import json
import queue
import re
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saeforge.atomic import write_text

GENESIS = "0" * 64
HEAD = "HEAD.json"
_FILE = re.compile(r"audit-(\d{6})\.jsonl")


def canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(record: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of `record` without its `hash` field."""
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def log_files(directory: Path) -> list[Path]:
    return sorted(p for p in Path(directory).iterdir() if _FILE.fullmatch(p.name))


class AuditLog:
    """Appends records to the folder `directory`; `submit(record)` returns a Future resolved once on disk."""

    def __init__(self, directory: Path, max_bytes: int = 64 << 20, max_delay_s: float = 0.005):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.max_delay_s = max_delay_s
        self._queue: queue.Queue = queue.Queue()
        self.seq, self.prev, self.path = self._recover()
        self._file = open(self.path, "ab")  # noqa: SIM115 - owned by the writer thread until close()
        self._thread = threading.Thread(target=self._write_loop, name="saeforge-audit", daemon=True)
        self._thread.start()

    def _recover(self) -> tuple[int, str, Path]:
        """The next seq, the last hash and the file to append to; cuts a torn last record off the newest file."""
        files = log_files(self.directory)
        if not files:
            return 0, GENESIS, self.directory / "audit-000001.jsonl"
        result = verify_log(self.directory)
        if not result.ok:
            raise ValueError(
                f"the audit log {self.directory} does not verify ({result.error}); it is evidence, so "
                "saeforge will not append to it: move it aside and start with a new --audit-log folder"
            )
        newest = files[-1]
        data = newest.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with open(newest, "r+b") as f:
                f.truncate(keep)
            print(
                f"audit log: cut a torn record ({len(data) - keep} bytes) off the end of {newest}",
                file=sys.stderr,
            )
        if result.last_hash is None:
            return 0, GENESIS, newest
        return result.records_end, result.last_hash, newest

    def submit(self, record: dict[str, Any]) -> Future:
        """Queues `record` (a dict of JSON values, without seq/prev/hash); the Future resolves to its seq."""
        fut: Future = Future()
        self._queue.put((record, fut))
        return fut

    def close(self, timeout: float | None = 30) -> None:
        """Writes everything queued, then stops the writer."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)
        self._file.close()

    def _take_group(self, first) -> tuple[list, bool]:
        group, stop = [first], False
        try:
            while True:
                item = self._queue.get(timeout=self.max_delay_s)
                if item is None:
                    stop = True
                    break
                group.append(item)
        except queue.Empty:
            pass
        return group, stop

    def _write_loop(self) -> None:
        import os

        while True:
            first = self._queue.get()
            if first is None:
                return
            group, stop = self._take_group(first)
            try:
                for record, _ in group:
                    line = self._seal(record)
                    if self._file.tell() > 0 and self._file.tell() + len(line) > self.max_bytes:
                        self._rotate()
                    self._file.write(line)
                self._file.flush()
                os.fsync(self._file.fileno())
                head = {"seq": self.seq - 1, "hash": self.prev, "file": self.path.name}
                write_text(self.directory / HEAD, json.dumps(head))
            except BaseException as e:  # noqa: BLE001 - every waiting request learns of it
                for _, fut in group:
                    fut.set_exception(e)
            else:
                for record, fut in group:
                    fut.set_result(record["seq"])
            if stop:
                return

    def _seal(self, record: dict[str, Any]) -> bytes:
        record["seq"], record["prev"] = self.seq, self.prev
        record["hash"] = record_hash(record)
        self.seq, self.prev = self.seq + 1, record["hash"]
        return canonical(record) + b"\n"

    def _rotate(self) -> None:
        import os

        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        n = int(_FILE.fullmatch(self.path.name).group(1)) + 1
        self.path = self.directory / f"audit-{n:06d}.jsonl"
        self._file = open(self.path, "ab")  # noqa: SIM115


@dataclass
class VerifyResult:
    """`ok` is False exactly when `error` names a problem; `warning` notes a torn last record (still ok)."""

    files: int
    records: int
    error: str | None = None
    warning: str | None = None
    last_hash: str | None = None
    records_end: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


def _check_line(raw: bytes, where: str, seq: int | None, prev: str | None) -> tuple[dict | None, str | None]:
    try:
        rec = json.loads(raw)
        if not isinstance(rec, dict) or not {"seq", "prev", "hash"} <= rec.keys():
            raise ValueError
    except ValueError:
        return None, f"{where} is not a complete audit record (truncated or overwritten)"
    if record_hash(rec) != rec["hash"]:
        return None, f"record seq {rec.get('seq')} at {where} was edited: its hash does not match its content"
    if seq is not None and rec["seq"] != seq:
        if isinstance(rec["seq"], int) and rec["seq"] > seq:
            missing = f"seq {seq}" if rec["seq"] == seq + 1 else f"seq {seq}..{rec['seq'] - 1}"
            return None, f"record {missing} deleted: {where} holds seq {rec['seq']} where seq {seq} belongs"
        return None, f"records reordered: {where} holds seq {rec['seq']} where seq {seq} belongs"
    if prev is not None and rec["prev"] != prev:
        return None, (
            f"record seq {rec['seq']} at {where} does not follow the record before it (its prev is not that "
            "record's hash): the record before it was edited, or records were reordered"
        )
    return rec, None


def _appears_later(lines: list[tuple[str, bytes]], seq: int | None) -> bool:
    for _, raw in lines:
        try:
            if json.loads(raw).get("seq") == seq:
                return True
        except (ValueError, AttributeError):
            continue
    return False


def verify_log(log: Path) -> VerifyResult:
    """Checks the chain of an `--audit-log` folder (or of one of its files, whose first record's `prev` and
    `seq` are then taken as given). Names the first edited, deleted, reordered or truncated record."""
    log = Path(log)
    files = log_files(log) if log.is_dir() else [log]
    single = not log.is_dir()
    res = VerifyResult(files=len(files), records=0)
    if not files:
        res.error = f"{log} holds no audit-*.jsonl files"
        return res
    seq, prev = (None, None) if single else (0, GENESIS)
    lines: list[tuple[str, bytes]] = []
    for fi, path in enumerate(files):
        raw_lines = path.read_bytes().split(b"\n")
        tail = raw_lines.pop()  # b"" when the file ends with a newline, else a torn last line
        lines += [(f"{path.name} line {li}", raw) for li, raw in enumerate(raw_lines, 1)]
        if tail:
            where = f"{path.name} line {len(raw_lines) + 1}"
            if fi < len(files) - 1:
                lines.append((where, b""))  # an error when reached: newer files follow a torn record
            else:
                res.warning = f"{where}: the last record is torn (a crash while writing it); the records before it verify"
    for n, (where, raw) in enumerate(lines):
        rec, err = _check_line(raw, where, seq, prev)
        if err and "deleted" in err and _appears_later(lines[n + 1 :], seq):
            err = f"records reordered: {where} holds seq {json.loads(raw)['seq']} where seq {seq} belongs"
        if err:
            res.error = err if raw else f"{where} is truncated, and newer files follow it"
            return res
        seq, prev = rec["seq"] + 1, rec["hash"]
        res.records += 1
    res.last_hash, res.records_end = prev, seq or 0
    head_path = (log if log.is_dir() else log.parent) / HEAD
    if not single and head_path.is_file():
        head = json.loads(head_path.read_text())
        if head["seq"] == res.records_end - 1 and head["hash"] != res.last_hash:
            res.error = (
                f"record seq {head['seq']} ({head['file']}), the last one, was edited: its hash is not the one "
                f"{HEAD} recorded when it was written"
            )
        elif head["seq"] >= res.records_end:
            res.error = (
                f"log truncated: {HEAD} says record seq {head['seq']} ({head['file']}) was written, but the log "
                f"ends at seq {res.records_end - 1}"
            )
    return res


def read_records(log: Path) -> list[dict[str, Any]]:
    """Every complete record of a log folder (or file), in order; a torn last line is skipped."""
    log = Path(log)
    out = []
    for path in log_files(log) if log.is_dir() else [log]:
        for raw in path.read_bytes().split(b"\n"):
            try:
                out.append(json.loads(raw))
            except ValueError:
                continue
    return out
