"""The audit log on its own: chain across rotated files, and detection of every kind of tampering."""

from __future__ import annotations

import json

import pytest

from saeforge.serve.audit import AuditLog, log_files, read_records, verify_log


def write_log(directory, n=12, max_bytes=600):
    log = AuditLog(directory, max_bytes=max_bytes, max_delay_s=0.001)
    futs = [log.submit({"request_id": f"r{i}", "status": 200, "prompt": "x" * 40}) for i in range(n)]
    assert [f.result(10) for f in futs] == list(range(n))
    log.close()
    return log_files(directory)


def lines_of(path):
    return path.read_bytes().splitlines(keepends=True)


def test_chain_continues_across_rotated_files_and_reopen(tmp_path):
    files = write_log(tmp_path)
    assert len(files) >= 3
    res = verify_log(tmp_path)
    assert res.ok and res.records == 12 and res.warning is None
    first_of_second = json.loads(lines_of(files[1])[0])
    last_of_first = json.loads(lines_of(files[0])[-1])
    assert (
        first_of_second["prev"] == last_of_first["hash"]
        and first_of_second["seq"] == last_of_first["seq"] + 1
    )
    log = AuditLog(tmp_path, max_bytes=600)  # reopening continues the chain
    assert log.submit({"request_id": "again"}).result(10) == 12
    log.close()
    assert verify_log(tmp_path).records == 13
    assert verify_log(files[1]).ok  # one file alone verifies internally


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_an_edited_record_is_named(tmp_path, where):
    files = write_log(tmp_path)
    path = {"first": files[0], "middle": files[1], "last": files[-1]}[where]
    lines = lines_of(path)
    k = 0 if where != "last" else len(lines) - 1
    seq = json.loads(lines[k])["seq"]
    lines[k] = lines[k].replace(b'"status":200', b'"status":201')
    path.write_bytes(b"".join(lines))
    res = verify_log(tmp_path)
    assert not res.ok and f"record seq {seq} at {path.name} line {k + 1} was edited" in res.error


def test_edit_with_recomputed_hash_breaks_the_chain_or_head(tmp_path):
    from saeforge.serve.audit import record_hash

    files = write_log(tmp_path)
    for path, k in ((files[0], 0), (files[-1], len(lines_of(files[-1])) - 1)):
        original = path.read_bytes()
        lines = lines_of(path)
        rec = json.loads(lines[k])
        rec["status"] = 500
        rec["hash"] = record_hash(rec)
        lines[k] = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        path.write_bytes(b"".join(lines))
        res = verify_log(tmp_path)
        assert not res.ok, path
        assert "does not follow" in res.error if k == 0 else "the last one, was edited" in res.error
        path.write_bytes(original)
    assert verify_log(tmp_path).ok


def test_deleted_reordered_and_truncated_records(tmp_path):
    files = write_log(tmp_path)
    lines = lines_of(files[1])
    deleted = json.loads(lines[1])["seq"]
    files[1].write_bytes(b"".join(lines[:1] + lines[2:]))
    assert f"record seq {deleted} deleted" in verify_log(tmp_path).error
    files[1].write_bytes(b"".join([lines[1], lines[0], *lines[2:]]))
    assert "reordered" in verify_log(tmp_path).error
    files[1].write_bytes(b"".join(lines))
    assert verify_log(tmp_path).ok
    files[0].write_bytes(files[0].read_bytes()[:-10])  # a torn record in an older file is an error
    assert "truncated" in verify_log(tmp_path).error


def test_torn_last_record_is_a_warning_and_dropped_records_at_the_end_are_not(tmp_path):
    files = write_log(tmp_path)
    newest = files[-1]
    whole = newest.read_bytes()
    newest.write_bytes(whole + b'{"seq": 12, "prev": "ab')
    res = verify_log(tmp_path)
    assert res.ok and "torn" in res.warning and res.records == 12
    log = AuditLog(tmp_path, max_bytes=600)  # reopening cuts the torn tail, then appends
    log.submit({"request_id": "after crash"}).result(10)
    log.close()
    assert verify_log(tmp_path).ok and read_records(tmp_path)[-1]["request_id"] == "after crash"
    lines = lines_of(log_files(tmp_path)[-1])
    log_files(tmp_path)[-1].write_bytes(b"".join(lines[:-1]))  # a whole record cut off the end
    assert "log truncated" in verify_log(tmp_path).error


def test_a_log_that_does_not_verify_is_not_appended_to(tmp_path):
    files = write_log(tmp_path)
    files[0].write_bytes(files[0].read_bytes().replace(b'"status":200', b'"status":404', 1))
    with pytest.raises(ValueError, match="does not verify"):
        AuditLog(tmp_path)


def test_cli_verify_exit_codes_and_report(tmp_path, cli):
    write_log(tmp_path / "log")
    ok = cli("audit", "verify", tmp_path / "log")
    assert "OK" in ok.stdout and "12 records" in ok.stdout
    files = log_files(tmp_path / "log")
    files[1].write_bytes(files[1].read_bytes().replace(b'"status":200', b'"status":201', 1))
    bad = cli("audit", "verify", tmp_path / "log", check=False)
    assert bad.returncode == 1 and "was edited" in bad.stdout
    rep = cli("audit", "report", tmp_path / "log", "--out", tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert "saeforge audit report" in html and "all requests" in html and "was edited" in html
    assert "all requests" in rep.stdout


def test_summary_groups_features_by_variant_key_and_time():
    from saeforge.serve.summary import summarise

    def rec(t, variant, key, feats, status=200):
        top = [
            {"latent": lat, "max": mx, "mean": mx / 2, "label": "L" if lat == 3 else None}
            for lat, mx in feats
        ]
        return {
            "time": t,
            "endpoint": "/v1/completions",
            "variant": variant,
            "key_id": key,
            "status": status,
            "tokens": {"prompt": 2, "completion": 3},
            "features": [{"index": 0, "sae": "s", "top": top}],
        }

    records = [
        rec("2026-12-02T01:00:00.000Z", None, "key-a", [(3, 2.0), (5, 1.0)]),
        rec("2026-12-02T01:10:00.500Z", "formal", "key-a", [(3, 4.0)]),
        rec("2026-12-02T02:30:00.000Z", "formal", "key-b", [(5, 3.0)], status=400),
    ]
    s = summarise(records, bucket_s=3600)
    groups = {g.name: g for g in s.groups}
    assert groups["all requests"].requests == 3 and groups["all requests"].errors == 1
    assert groups["all requests"].tokens == 15
    top = {(f.sae, f.latent): f for f in groups["all requests"].features}
    assert top[("s", 3)].requests == 2 and top[("s", 3)].mean_max == 3.0 and top[("s", 3)].label == "L"
    assert top[("s", 5)].mean_max == 2.0
    assert groups["variant: formal"].requests == 2 and groups["variant: (base model)"].requests == 1
    assert groups["key: key-b"].errors == 1
    assert (
        s.requests_per_bucket == [2, 1] and s.series["s:3"] == [3.0, None] and s.series["s:5"] == [1.0, 3.0]
    )
