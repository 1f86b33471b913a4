"""Under load: 16 concurrent clients, kill -9 mid-load, SIGTERM with a request in flight."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx
import pytest

from saeforge.serve.audit import read_records, verify_log
from tests.conftest import REPO, cli_env
from tests.serve.conftest import config

CLIENTS = 16
PER_CLIENT = 20


def _request(url: str, i: int) -> dict:
    kinds = [
        {"prompt": f"Request {i} about modules", "temperature": 0},
        {"prompt": f"Steered {i}", "saeforge": {"steer": [{"latent": i % 32, "coefficient": 50.0}]}},
        {"prompt": f"Stream {i}", "stream": True},
    ]
    return {"model": "gpt2", "max_tokens": 3, **kinds[i % 3]}


def _send(client: httpx.Client, url: str, i: int) -> tuple[int, str]:
    body = _request(url, i)
    if body.get("stream"):
        with client.stream("POST", f"{url}/completions", json=body) as r:
            text = "".join(r.iter_text())
            assert r.status_code != 200 or text.rstrip().endswith("data: [DONE]")
            return r.status_code, r.headers["x-request-id"]
    r = client.post(f"{url}/completions", json=body)
    return r.status_code, r.headers["x-request-id"]


def test_load_16_clients_no_errors_one_verified_record_each(serve_assets, start_server, tmp_path):
    log = tmp_path / "audit"
    with start_server(config(serve_assets, tmp_path, audit_log=log, audit_max_bytes=20_000)) as srv:

        def client_run(c: int) -> list[tuple[int, str]]:
            with httpx.Client(timeout=120) as client:
                return [_send(client, srv.url, c * PER_CLIENT + j) for j in range(PER_CLIENT)]

        with ThreadPoolExecutor(CLIENTS) as pool:
            results = [r for rs in pool.map(client_run, range(CLIENTS)) for r in rs]
    assert len(results) == CLIENTS * PER_CLIENT
    assert [s for s, _ in results if s != 200] == []
    check = verify_log(log)
    assert check.ok and check.warning is None and check.files > 1  # rotated, chain intact across files
    ids = [r["request_id"] for r in read_records(log)]
    assert len(ids) == len(set(ids)) and set(ids) == {rid for _, rid in results}


def _start_cli(args: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "saeforge", "serve", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cli_env(OMP_NUM_THREADS="1"),
        cwd=REPO,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    seen = []
    while True:
        try:
            line = lines.get(timeout=120)
        except queue.Empty:
            proc.kill()
            pytest.fail(f"server did not start: {''.join(seen)}")
        seen.append(line)
        if "listening on " in line:
            return proc, line.split("listening on ", 1)[1].strip()


def _cli_args(assets, log):
    return [
        "--model",
        assets["model"],
        "--model-name",
        "gpt2",
        "--sae",
        assets["sae"],
        "--port",
        "0",
        "--audit-log",
        log,
        "--audit-max-bytes",
        "20000",
    ]


def test_kill_9_under_load_leaves_a_log_whose_complete_records_verify(serve_assets, tmp_path):
    log = tmp_path / "audit"
    proc, url = _start_cli(_cli_args(serve_assets, log))
    done: list[str] = []
    lock = threading.Lock()
    enough = threading.Event()

    def hammer(c: int) -> None:
        with httpx.Client(timeout=30) as client:
            for j in range(200):
                try:
                    status, rid = _send(client, url, c * 200 + j)
                except (httpx.HTTPError, KeyError):
                    return
                if status == 200:
                    with lock:
                        done.append(rid)
                        if len(done) >= 60:
                            enough.set()

    threads = [threading.Thread(target=hammer, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    assert enough.wait(120), "the server answered fewer than 60 requests"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    for t in threads:
        t.join(60)
    check = verify_log(log)
    assert check.ok, check.error
    logged = {r["request_id"] for r in read_records(log)}
    assert set(done) <= logged  # every answered request was on disk before its answer


def test_sigterm_finishes_in_flight_stream_and_flushes_the_log(serve_assets, tmp_path):
    log = tmp_path / "audit"
    proc, url = _start_cli(_cli_args(serve_assets, log))
    body = {"model": "gpt2", "prompt": "Long", "max_tokens": 120, "temperature": 0, "stream": True}
    with httpx.Client(timeout=60) as client, client.stream("POST", f"{url}/completions", json=body) as r:
        chunks = r.iter_text()
        first = next(chunks)
        assert first.startswith("data: ")
        proc.send_signal(signal.SIGTERM)
        rest = "".join(chunks)
        rid = r.headers["x-request-id"]
    assert rest.rstrip().endswith("data: [DONE]")
    assert proc.wait(60) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/models")
    rec = {r["request_id"]: r for r in read_records(log)}[rid]
    assert rec["status"] == 200 and rec["tokens"]["completion"] >= 1
    assert verify_log(log).ok
