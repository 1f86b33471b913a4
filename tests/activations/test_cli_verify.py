"""`saeforge verify`: exit 0 on a good store, non-zero naming each bad shard (truncated or flipped)."""

from __future__ import annotations

import torch

from saeforge.activations.writer import write_store


def test_verify_cli(tmp_path, cli):
    out = tmp_path / "out"
    a = write_store(
        out / "layers.0.resid_post", torch.randn(30, 4), hook="layers.0.resid_post", shard_rows=10
    )
    b = write_store(
        out / "layers.1.resid_post", torch.randn(30, 4), hook="layers.1.resid_post", shard_rows=10
    )
    ok = cli("verify", out)
    assert ok.stdout.count("OK") == 2
    flipped = a.shard_path(1)
    data = bytearray(flipped.read_bytes())
    data[-1] ^= 0x10
    flipped.write_bytes(bytes(data))
    truncated = b.shard_path(2)
    truncated.write_bytes(truncated.read_bytes()[:100])
    bad = cli("verify", out, check=False)
    assert bad.returncode == 1
    lines = [line for line in bad.stdout.splitlines() if "bad shard:" in line]
    assert len(lines) == 2
    assert str(flipped) in lines[0] and "sha256" in lines[0]
    assert str(truncated) in lines[1] and "truncated" in lines[1]
    assert cli("verify", tmp_path / "nothing", check=False).returncode == 2
