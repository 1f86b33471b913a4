"""Atomic writes keep the old file on failure and leave no temporary files behind."""

from __future__ import annotations

import pytest

from saeforge.atomic import atomic_path, write_text, write_with


def test_write_text_replaces_content(tmp_path):
    p = tmp_path / "sub" / "a.json"
    write_text(p, "one")
    write_text(p, "two")
    assert p.read_text() == "two"
    assert sorted(x.name for x in p.parent.iterdir()) == ["a.json"]


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    p = tmp_path / "a.txt"
    write_text(p, "old")

    def half_then_fail(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_with(p, half_then_fail)
    assert p.read_text() == "old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.txt"]


def test_target_absent_until_the_block_ends(tmp_path):
    p = tmp_path / "b.bin"
    with atomic_path(p) as tmp:
        tmp.write_bytes(b"x")
        assert not p.exists()
    assert p.read_bytes() == b"x"


def test_atomic_files_honour_the_umask(tmp_path):
    import os

    from saeforge.atomic import write_text

    old = os.umask(0o027)
    try:
        write_text(tmp_path / "shared.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "shared.txt").stat().st_mode & 0o777 == 0o640
