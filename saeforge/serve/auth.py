"""Bearer API keys: read from a file (one per line), kept only as sha256 digests; a key's id is logged, never it.

A line may hold a key, or `sha256:<hex>` (the key's digest, so the file itself need not hold secrets). Blank
lines and lines starting with '#' are skipped. The key id is `key-` + the first 12 hex digits of the digest.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(digest: str) -> str:
    return "key-" + digest[:12]


class APIKeys:
    def __init__(self, digests: list[str]):
        self.digests = digests

    @classmethod
    def from_file(cls, path: Path) -> APIKeys:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"--api-keys {path}: no such file (one API key per line)")
        digests = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("sha256:"):
                d = line.removeprefix("sha256:").lower()
                if len(d) != 64 or any(c not in "0123456789abcdef" for c in d):
                    raise ValueError(f"--api-keys {path} line {n}: sha256: must be followed by 64 hex digits")
                digests.append(d)
            else:
                digests.append(key_digest(line))
        if not digests:
            raise ValueError(f"--api-keys {path} holds no keys (one key per line)")
        return cls(digests)

    def check(self, authorization: str | None) -> str | None:
        """The key id for an `Authorization: Bearer KEY` header value, or None when it matches no key."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        digest = key_digest(authorization.removeprefix("Bearer ").strip())
        found = None
        for d in self.digests:
            if hmac.compare_digest(d, digest):
                found = d
        return key_id(found) if found else None
