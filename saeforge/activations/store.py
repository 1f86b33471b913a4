"""ActivationStore: a directory of safetensors shards described by `manifest.json`, read through memmaps."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from saeforge.activations.manifest import MANIFEST, Manifest, Stats
from saeforge.activations.shards import (
    ST_DTYPES,
    ShardError,
    as_tensor,
    memmap_array,
    memmap_tensor,
    read_header,
    sha256_file,
)
from saeforge.dtypes import SAFETENSORS_NAMES, torch_dtype

VerifyMode = Literal["lazy", "now", "off"]

# Shards whose bytes matched their manifest sha256 in this process, keyed by (file, inode, size, mtime, sha256):
# reopening a store (eval opens it per SAE) does not hash it again; a rewritten file has a new key.
_VERIFIED: set[tuple] = set()


class StoreError(ValueError):
    """The directory is not a usable activation store; the message says why and what to do."""


class UnsealedManifestWarning(UserWarning):
    """The manifest predates format version 2: it has no `shards_digest`, so a deleted, duplicated or
    reordered shard entry cannot be detected (see docs/reliability.md)."""


def escaping_shards(path: Path, manifest: Manifest) -> list[str]:
    """One line per shard entry whose file resolves outside the store directory `path` (through a symlink of
    it or of a directory on its way), checked without opening any file."""
    root = Path(path).resolve()
    bad = []
    for i, entry in enumerate(manifest.shards):
        target = (root / entry.path).resolve()
        if not target.is_relative_to(root):
            bad.append(
                f"shard {i} ({entry.path}) resolves to {target}, outside the store {root}: refusing to open it"
            )
    return bad


def manifest_problems(path: Path, manifest: Manifest) -> list[str]:
    """What makes the manifest unusable before any shard is read: entries escaping the store, duplicates, a
    total_rows or shards_digest that does not match the shard list. [] when sound."""
    return escaping_shards(path, manifest) + manifest.list_problems()


def _verified_key(file: Path, sha256: str) -> tuple:
    st = file.stat()
    return (str(file.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, sha256)


def find_stores(path: Path) -> list[Path]:
    """Store directories at `path`: itself if it has a manifest, else its subdirectories that have one."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return [path]
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if (p / MANIFEST).is_file())


def verify_shards(path: Path, manifest: Manifest) -> list[str]:
    """Checks each shard of `manifest` under `path` (header against the manifest, then sha256 when recorded);
    returns one line per problem: the manifest's own (`manifest_problems`, then no shard is opened), else one
    per bad shard ("path: reason"), in manifest order."""
    if bad := manifest_problems(path, manifest):
        return [f"{path / MANIFEST}: {line}" for line in bad]
    for i, entry in enumerate(manifest.shards):
        try:
            ActivationStore._check_header(path, manifest, i)
        except ShardError as e:
            bad.append(str(e))
            continue
        if entry.sha256 is not None and sha256_file(path / entry.path) != entry.sha256:
            bad.append(f"{path / entry.path}: sha256 mismatch (corrupted)")
    return bad


class ActivationStore:
    """An opened activation store.

    `open` reads the manifest and every shard's safetensors header (no data) and checks that each shard's
    `activations` is [rows, d_in] of the manifest's dtype. Every read is a verified read: with the default
    verify="lazy", a shard's bytes are hashed when it is first opened (`shard`, `activations_array`, hence
    every batch, gather and context) and a shard that differs from its manifest sha256 raises ShardError
    before any of its data is used. `verify()` checks every shard at once.
    """

    def __init__(
        self, path: Path, manifest: Manifest, headers: list[tuple[dict, int]], verify: VerifyMode = "lazy"
    ):
        self.path = Path(path)
        self.manifest = manifest
        self.verify_mode = verify
        self._checked: set[int] = set()
        self._headers = headers
        self._shards: dict[int, dict[str, torch.Tensor]] = {}
        self._arrays: dict[int, np.ndarray] = {}
        self._context_index: dict[int, tuple[int, int]] | None = None
        offsets = np.zeros(len(manifest.shards) + 1, dtype=np.int64)
        np.cumsum([s.rows for s in manifest.shards], out=offsets[1:])
        self.row_offsets = offsets

    @classmethod
    def open(cls, path: str | Path, verify: VerifyMode = "lazy") -> ActivationStore:
        """Opens the store at `path`, or the single store inside `path` (capture writes OUT/<hook name>).

        verify: "lazy" (default) checks each shard's sha256 as it is first read and refuses a store whose
        manifest lists no sha256; "now" checks every shard before returning; "off" (`--no-verify`, for stores
        of other tools without checksums) reads unverified bytes.
        """
        if verify not in ("lazy", "now", "off"):
            raise ValueError(f"verify must be 'lazy', 'now' or 'off', got {verify!r}")
        path = Path(path)
        if not path.exists():
            raise StoreError(
                f"activation store {path} does not exist; run `saeforge capture ... --out {path}`"
            )
        stores = find_stores(path)
        if not stores:
            raise StoreError(
                f"{path} holds no {MANIFEST}: it is not an activation store (nor a capture output)"
            )
        if len(stores) > 1:
            names = ", ".join(str(s) for s in stores)
            raise StoreError(f"{path} holds {len(stores)} stores (one per hook); open one of: {names}")
        path = stores[0]
        manifest = Manifest.read(path / MANIFEST)
        if escaping := escaping_shards(path, manifest):
            raise StoreError(f"{path / MANIFEST}: " + "; ".join(escaping))
        headers = [cls._check_header(path, manifest, i) for i in range(len(manifest.shards))]
        if problems := manifest.list_problems():
            raise StoreError(
                f"{path / MANIFEST}: " + "; ".join(problems) + ". The shard list no longer matches what was "
                f"written: check the store with `saeforge verify {path}`, then restore the manifest or recapture."
            )
        if manifest.shards_digest is None:
            warnings.warn(
                f"{path / MANIFEST} has no shards_digest (written before format version 2, or by another "
                "tool): a deleted, duplicated or reordered shard entry cannot be detected. Recapture, or "
                f"seal it after checking: `saeforge verify --seal {path}`",
                UnsealedManifestWarning,
                stacklevel=2,
            )
        if verify != "off" and (unlisted := [s.path for s in manifest.shards if s.sha256 is None]):
            raise StoreError(
                f"{path}: {len(unlisted)} of {len(manifest.shards)} shards list no sha256 in the manifest "
                f"(first: {unlisted[0]}), so their bytes cannot be verified. A store from another tool loads "
                "with --no-verify (config field verify: false), which the run card records."
            )
        store = cls(path, manifest, headers, verify)
        if verify == "now" and (bad := store.verify()):
            raise StoreError("corrupted shards: " + "; ".join(bad) + ". Recapture or restore these files.")
        return store

    def _verified(self, i: int) -> None:
        """Hashes shard i once (per process and file version) before its first read; raises ShardError on a
        mismatch. A no-op with verify="off"."""
        if self.verify_mode == "off" or i in self._checked:
            return
        sha = self.manifest.shards[i].sha256
        file = self.shard_path(i)
        key = _verified_key(file, sha)
        if key not in _VERIFIED:
            if sha256_file(file) != sha:
                raise ShardError(
                    f"{file}: its bytes differ from the manifest's sha256 (corrupted, or the manifest was "
                    f"edited); refusing to read it. Check the store with `saeforge verify {self.path}`, then "
                    "recapture or restore the shard."
                )
            _VERIFIED.add(key)
        self._checked.add(i)

    def check_shards(self) -> None:
        """Verifies every shard now, as its first read would (raises ShardError naming the first bad one), so a
        command fails before its long work rather than in the middle of it."""
        for i in range(self.num_shards):
            self._verified(i)

    @staticmethod
    def _check_header(path: Path, manifest: Manifest, i: int) -> tuple[dict, int]:
        entry = manifest.shards[i]
        file = path / entry.path
        header, start = read_header(file)
        acts = header.get("activations")
        if acts is None:
            raise ShardError(f"{file}: no `activations` tensor")
        expect = [entry.rows, manifest.d_in]
        if list(acts["shape"]) != expect:
            raise ShardError(
                f"{file}: `activations` is {acts['shape']}, manifest says {expect} ([rows, d_in])"
            )
        if acts["dtype"] != SAFETENSORS_NAMES[manifest.dtype]:
            raise ShardError(f"{file}: `activations` is {acts['dtype']}, manifest says {manifest.dtype}")
        return header, start

    # -- properties ---------------------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.manifest.d_in

    @property
    def dtype(self) -> torch.dtype:
        return torch_dtype(self.manifest.dtype)

    @property
    def hook(self) -> str:
        return self.manifest.hook

    @property
    def num_rows(self) -> int:
        return int(self.row_offsets[-1])

    @property
    def num_shards(self) -> int:
        return len(self.manifest.shards)

    @property
    def stats(self) -> Stats | None:
        return self.manifest.stats

    def shard_path(self, i: int) -> Path:
        return self.path / self.manifest.shards[i].path

    # -- data ---------------------------------------------------------------------------------------------
    def shard(self, i: int) -> dict[str, torch.Tensor]:
        """Memory-mapped tensors of shard i: `activations` [rows, d_in] and, when written by saeforge,
        `token_ids` [rows], `positions` [rows, 2] (sequence, position), `contexts` [n_seq, context_size],
        `context_ids` [n_seq]."""
        if i not in self._shards:
            self._verified(i)
            header, start = self._headers[i]
            file = self.shard_path(i)
            tensors = {}
            for name, info in header.items():
                if info["dtype"] not in ST_DTYPES:
                    continue
                tensors[name] = memmap_tensor(file, info, start)
            self._shards[i] = tensors
        return self._shards[i]

    def activations_array(self, i: int) -> np.ndarray:
        """Read-only numpy memmap of shard i's activations [rows, d_in] (bfloat16 as uint16), for fast gathers."""
        if i not in self._arrays:
            self._verified(i)
            header, start = self._headers[i]
            # A plain ndarray view (not the np.memmap subclass): fancy indexing on it is faster.
            self._arrays[i] = np.asarray(memmap_array(self.shard_path(i), header["activations"], start))
        return self._arrays[i]

    def verify(self) -> list[str]:
        """Checks every shard's header and sha256; returns one line per bad shard ("path: reason")."""
        return verify_shards(self.path, self.manifest)

    def iter_batches(self, batch_size: int, dtype: torch.dtype = torch.float32) -> Iterator[torch.Tensor]:
        """Yields all rows once, in store order, as fresh [<=batch_size, d_in] tensors (for evaluation)."""
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        st_dtype = SAFETENSORS_NAMES[self.manifest.dtype]
        arrays = [self.activations_array(i) for i in range(self.num_shards)]
        n = self.num_rows
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            buf = np.empty((stop - start, self.d_in), dtype=arrays[0].dtype if arrays else np.float32)
            first = int(np.searchsorted(self.row_offsets, start, side="right")) - 1
            at, s = 0, first
            while at < len(buf):
                lo = start + at - int(self.row_offsets[s])
                take = min(len(buf) - at, arrays[s].shape[0] - lo)
                buf[at : at + take] = arrays[s][lo : lo + take]
                at, s = at + take, s + 1
            batch = as_tensor(buf, st_dtype)
            yield batch if batch.dtype == dtype else batch.to(dtype)

    def context(self, seq_id: int) -> torch.Tensor | None:
        """Token ids [context_size] of stored sequence `seq_id`, or None if the store keeps no contexts."""
        if self._context_index is None:
            self._context_index = {}
            for i in range(self.num_shards):
                ids = self.shard(i).get("context_ids")
                for j, s in enumerate(ids.tolist() if ids is not None else []):
                    self._context_index.setdefault(s, (i, j))
        where = self._context_index.get(int(seq_id))
        if where is None:
            return None
        return self.shard(where[0])["contexts"][where[1]].clone()
