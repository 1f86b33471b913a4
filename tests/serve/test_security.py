"""Keys, exposure, and the bounds on every request (413 / 400 / 429 + Retry-After)."""

from __future__ import annotations

import hashlib
import socket
import time

import httpx2 as httpx
import openai
import pytest

from saeforge.serve.audit import read_records
from saeforge.serve.server import build_state
from tests.serve.conftest import config

KEY = "sk-test-5b9d0c2e"
OTHER = "sk-other-key"


def test_bearer_keys_401_and_key_id_logged_never_the_key(serve_assets, start_server, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# team keys\n{KEY}\nsha256:{hashlib.sha256(OTHER.encode()).hexdigest()}\n")
    log = tmp_path / "audit"
    with start_server(config(serve_assets, tmp_path, api_keys=keys, audit_log=log)) as srv:
        bare = httpx.get(f"{srv.url}/models")
        assert bare.status_code == 401 and bare.headers["www-authenticate"] == "Bearer"
        c = openai.OpenAI(base_url=srv.url, api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            c.models.list()
        assert e.value.body["type"] == "authentication_error"
        for key in (KEY, OTHER):
            c = openai.OpenAI(base_url=srv.url, api_key=key, max_retries=0)
            assert c.completions.create(model="gpt2", prompt="hi", max_tokens=2).choices
        assert httpx.get(srv.url.removesuffix("/v1") + "/health").status_code == 200  # not under /v1: open
    records = read_records(log)
    assert [r["status"] for r in records] == [401, 401, 200, 200]
    ids = [r["key_id"] for r in records]
    assert ids[:2] == [None, None] and ids[2] == "key-" + hashlib.sha256(KEY.encode()).hexdigest()[:12]
    assert ids[3] != ids[2]
    raw = b"".join(p.read_bytes() for p in log.iterdir())
    assert KEY.encode() not in raw and OTHER.encode() not in raw


def test_non_loopback_needs_keys_or_insecure_flag(serve_assets, tmp_path):
    with pytest.raises(ValueError, match="--insecure-no-auth"):
        build_state(config(serve_assets, tmp_path, host="0.0.0.0"))
    from saeforge.serve.server import check_exposure

    check_exposure(config(serve_assets, tmp_path, host="0.0.0.0", insecure_no_auth=True))
    check_exposure(config(serve_assets, tmp_path, host="::1"))


def test_body_prompt_tokens_and_coefficient_bounds(serve_assets, start_server, tmp_path):
    cfg = config(
        serve_assets,
        tmp_path,
        max_body_bytes=2000,
        max_prompt_tokens=20,
        max_tokens=16,
        max_coefficient=50,
        variants=None,
    )
    with start_server(cfg) as srv:
        url = f"{srv.url}/completions"
        big = httpx.post(url, json={"model": "gpt2", "prompt": "x " * 2000})
        assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
        chunked = httpx.post(url, content=iter([b'{"model": "gpt2", "prompt": "', b"y" * 3000, b'"}']))
        assert chunked.status_code == 413
        long = httpx.post(url, json={"model": "gpt2", "prompt": "word " * 60, "max_tokens": 2})
        assert long.status_code == 400 and "limit is 20" in long.json()["error"]["message"]
        many = httpx.post(url, json={"model": "gpt2", "prompt": "hi", "max_tokens": 17})
        assert many.status_code == 400 and many.json()["error"]["param"] == "max_tokens"
        steer = {
            "model": "gpt2",
            "prompt": "hi",
            "max_tokens": 2,
            "saeforge": {"steer": [{"latent": 1, "coefficient": -51}]},
        }
        strong = httpx.post(url, json=steer)
        assert strong.status_code == 400 and "50" in strong.json()["error"]["message"]
        typo = httpx.post(url, json={**steer, "saeforge": {"steers": []}})
        assert typo.status_code == 400 and "steers" in typo.json()["error"]["message"]
    statuses = [r["status"] for r in read_records(tmp_path / "audit")]
    assert statuses == [413, 413, 400, 400, 400, 400]


def test_concurrency_limit_is_429_with_retry_after(serve_assets, start_server, tmp_path):
    with start_server(config(serve_assets, tmp_path, max_concurrency=1)) as srv:
        held = socket.create_connection(("127.0.0.1", srv.port))
        # Headers promise a body that never comes: this request stays in flight until the socket closes.
        held.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n")
        body = {"model": "gpt2", "prompt": "hi", "max_tokens": 2}
        for _ in range(200):
            r = httpx.post(f"{srv.url}/completions", json=body)
            if r.status_code == 429:
                break
            time.sleep(0.05)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "rate_limit_error"
        held.close()
        for _ in range(200):
            if httpx.post(f"{srv.url}/completions", json=body).status_code == 200:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the slot of the closed request was never released")
