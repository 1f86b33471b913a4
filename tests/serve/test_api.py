"""The OpenAI-compatible API through the real `openai` client and curl, on 127.0.0.1:0, with the audit log."""

from __future__ import annotations

import json
import shutil
import subprocess

import openai
import pytest

from saeforge.serve.audit import read_records, verify_log
from saeforge.steer import generate, steering
from tests.serve.conftest import HOOK, LABELS, SAE_NAME, config

PROMPT = "The documentation of the module"


@pytest.fixture(scope="module")
def server(serve_assets, start_server, tmp_path_factory):
    log = tmp_path_factory.mktemp("api") / "audit"
    with start_server(config(serve_assets, log.parent, audit_log=log)) as srv:
        srv.log = log
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)


def greedy(client, model="gpt2", **kw):
    return client.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0, **kw)


def test_models_lists_base_and_variants(client):
    assert [m.id for m in client.models.list()] == ["gpt2", "gpt2:formal", "gpt2:quiet"]


def test_completion_equals_saeforge_steer_and_variant_equals_its_edit(client, server):
    loaded = server.state.backend.loaded
    sae = server.state.saes[SAE_NAME].sae
    plain_ids = generate(loaded, PROMPT, 8)[0]
    with steering(loaded, HOOK, sae.W_dec.detach()[3], 200.0):
        steer_ids = generate(loaded, PROMPT, 8)[0]
    tok = loaded.tokenizer
    r = greedy(client)
    assert r.choices[0].text == tok.decode(plain_ids, skip_special_tokens=True)
    assert r.usage.prompt_tokens == len(tok(PROMPT)["input_ids"]) and r.usage.completion_tokens == len(
        plain_ids
    )
    steer = {"saeforge": {"steer": [{"latent": 3, "coefficient": 200.0}]}}
    s = greedy(client, extra_body=steer)
    assert s.choices[0].text == tok.decode(steer_ids, skip_special_tokens=True) != r.choices[0].text
    assert greedy(client, model="gpt2:formal").choices[0].text == s.choices[0].text
    zero = {"saeforge": {"steer": [{"sae": SAE_NAME, "latent": 3, "coefficient": 0.0}]}}
    assert greedy(client, extra_body=zero).choices[0].text == r.choices[0].text


def test_chat_sync_and_stream_agree(client):
    msgs = [{"role": "user", "content": "Write about modules"}]
    r = client.chat.completions.create(model="gpt2", messages=msgs, max_tokens=8, temperature=0)
    assert r.choices[0].message.role == "assistant" and r.usage.completion_tokens >= 1
    chunks = list(
        client.chat.completions.create(
            model="gpt2",
            messages=msgs,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason


def test_n_seed_stop_and_features(client):
    kw = dict(model="gpt2", prompt=PROMPT, max_tokens=8, temperature=1.0, seed=11)
    a, b = client.completions.create(n=2, **kw), client.completions.create(n=2, **kw)
    assert [c.text for c in a.choices] == [c.text for c in b.choices] and len(a.choices) == 2
    text = greedy(client).choices[0].text
    cut = greedy(client, stop=[text[2:4]])
    assert cut.choices[0].text == text[: text.find(text[2:4])] and cut.choices[0].finish_reason == "stop"
    ext = {
        "saeforge": {
            "steer": [{"latent": 3, "coefficient": 200.0}],
            "return_features": {"top": 3, "per_token": True},
        }
    }
    f = greedy(client, extra_body=ext).model_extra["saeforge"]
    entry = f["features"][0]
    assert entry["sae"] == SAE_NAME and entry["top"][0]["latent"] == 3
    assert entry["top"][0]["label"] == LABELS[3] and len(entry["tokens"]) >= 1
    assert f["steering"]["steer"] == [{"sae": SAE_NAME, "latent": 3, "coefficient": 200.0}]


def test_errors_use_the_openai_envelope(client, serve_assets, start_server, tmp_path):
    with pytest.raises(openai.BadRequestError) as e:
        greedy(client, extra_body={"saeforge": {"steer": [{"latent": 32, "coefficient": 1.0}]}})
    assert "0..31" in e.value.body["message"] and e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError, match="unknown SAE"):
        greedy(client, extra_body={"saeforge": {"clamp": [{"sae": "nope", "latent": 1, "value": 0}]}})
    with pytest.raises(openai.NotFoundError) as e:
        greedy(client, model="gpt2:casual")
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="gpt2", prompt=PROMPT, max_tokens=100000)
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.completions.create(model="gpt2", prompt=PROMPT, max_tokens=2, logprobs=2)
    with pytest.raises(openai.BadRequestError, match="/v1/embeddings serves encoder"):
        client.embeddings.create(model="gpt2", input="hi")


def test_chat_without_template_is_a_clear_400(serve_assets, start_server, tmp_path):
    model = tmp_path / "gpt2-notemplate"
    shutil.copytree(serve_assets["model"], model)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    cfg_path = model / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    tok_cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(tok_cfg))
    with start_server(config(serve_assets, tmp_path, model=model, sae=[], index=[], variants=None)) as srv:
        c = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="no chat template"):
            c.chat.completions.create(
                model="gpt2", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
        assert c.completions.create(model="gpt2", prompt="hi", max_tokens=2).usage.completion_tokens >= 1


def test_feature_index_endpoints(server):
    import httpx2 as httpx

    hits = httpx.get(f"{server.url}/features/search", params={"q": "legal"}).json()["data"]
    assert [h["latent"] for h in hits] == [3] and hits[0]["explanation"] == LABELS[3]
    one = httpx.get(f"{server.url}/features/{SAE_NAME}/7").json()
    assert one["explanation"] == LABELS[7] and one["indexed"] and one["top_contexts"] == []
    ctx = httpx.get(f"{server.url}/features/{SAE_NAME}/3").json()["top_contexts"]
    assert ctx == [
        {"activation": 7.5, "tokens": ["the", " court", " held"], "acts": [0.0, 1.0, 7.5], "center": 2}
    ]
    assert httpx.get(f"{server.url}/features/{SAE_NAME}/5").json()["indexed"] is False
    bad = httpx.get(f"{server.url}/features/{SAE_NAME}/99")
    assert bad.status_code == 400 and "0..31" in bad.json()["error"]["message"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_stream_ends_with_done(server):
    body = json.dumps({"model": "gpt2", "prompt": PROMPT, "max_tokens": 5, "temperature": 0, "stream": True})
    out = subprocess.run(
        ["curl", "-sN", "-H", "Content-Type: application/json", "-d", body, f"{server.url}/completions"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    events = [line.removeprefix("data: ") for line in out.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) >= 3
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    assert all(c["object"] == "text_completion" for c in chunks)
    err = subprocess.run(
        ["curl", "-s", "-w", "\\n%{http_code}", "-d", "{not json", f"{server.url}/completions"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.rsplit("\n", 1)
    assert err[1] == "400" and "not valid JSON" in json.loads(err[0])["error"]["message"]


def test_audit_has_one_verified_record_per_request(server, client):
    import httpx2 as httpx

    before = len(read_records(server.log))
    ids = []
    for i in range(3):
        raw = client.completions.with_raw_response.create(model="gpt2", prompt=f"{PROMPT} {i}", max_tokens=3)
        ids.append(raw.headers["x-request-id"])
    ids.append(
        httpx.post(f"{server.url}/completions", json={"model": "nope", "prompt": "x"}).headers["x-request-id"]
    )
    records = read_records(server.log)
    assert len(records) == before + 4
    by_id = {r["request_id"]: r for r in records}
    assert [by_id[i]["status"] for i in ids] == [200, 200, 200, 404]
    rec = by_id[ids[0]]
    assert rec["prompt"] == f"{PROMPT} 0" and rec["tokens"]["completion"] == 3 and rec["model"] == "gpt2"
    assert rec["model_fingerprint"] == server.state.backend.fingerprint
    assert rec["saes"][0]["sha256"] == server.state.saes[SAE_NAME].sha256 and rec["features"]
    assert verify_log(server.log).ok


def test_audit_text_hash_and_none(serve_assets, start_server, tmp_path):
    import hashlib

    for mode in ("hash", "none"):
        log = tmp_path / mode
        with start_server(config(serve_assets, tmp_path, audit_log=log, audit_text=mode)) as srv:
            c = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0)
            text = c.completions.create(model="gpt2", prompt=PROMPT, max_tokens=3).choices[0].text
        rec = [r for r in read_records(log) if r["endpoint"] == "/v1/completions"][0]
        assert "prompt" not in rec and "completion" not in rec
        if mode == "hash":
            assert rec["prompt_sha256"] == hashlib.sha256(PROMPT.encode()).hexdigest()
            assert rec["completion_sha256"] == [hashlib.sha256(text.encode()).hexdigest()]
        else:
            assert "prompt_sha256" not in rec


def test_client_disconnect_mid_stream_is_audited_as_499(server):
    import time

    import httpx2 as httpx

    body = {"model": "gpt2", "prompt": PROMPT, "max_tokens": 500, "temperature": 0, "stream": True}
    with httpx.Client(timeout=60) as http, http.stream("POST", f"{server.url}/completions", json=body) as r:
        rid = r.headers["x-request-id"]
        next(r.iter_bytes())
    for _ in range(400):  # the server notices at its next send
        rec = {x["request_id"]: x for x in read_records(server.log)}.get(rid)
        if rec is not None:
            break
        time.sleep(0.05)
    assert rec is not None and rec["status"] == 499 and rec["stream"] is True
    assert "disconnected" in rec["error"] and verify_log(server.log).ok
