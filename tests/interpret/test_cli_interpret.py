"""`saeforge interpret` and `saeforge features` end to end on a store written from a planted stream."""

from __future__ import annotations

import json

import pytest
import torch

from saeforge.activations.writer import write_store
from saeforge.interpret.records import load_interpretation
from saeforge.sae import save_sae
from saeforge.sae.base import SAEConfig
from saeforge.sae.standard import StandardSAE
from tests.interpret.helpers import planted_stream
from tests.interpret.judge_server import JudgeServer

HOOK = "layers.1.resid_post"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    batches, _ = planted_stream(n_seq=60)
    x = torch.cat([b.activations for b in batches])
    tok = torch.cat([b.token_ids for b in batches])
    pos = torch.cat([b.positions for b in batches])
    write_store(root / "store", x, hook=HOOK, shard_rows=500, token_ids=tok, positions=pos)
    sae = StandardSAE(SAEConfig(architecture="standard", d_in=8, d_sae=8, apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(8))
        sae.W_dec.copy_(torch.eye(8))
    save_sae(sae, root / "sae", metadata={"hook_name": HOOK})
    return root


def test_interpret_cli_with_judge_and_search(setup, cli, tmp_path):
    out = tmp_path / "out"
    with JudgeServer(fail_first=1) as server:
        proc = cli(
            "interpret",
            "--sae",
            setup / "sae",
            "--activations",
            setup / "store",
            "--latent-ids",
            "2,5",
            "--out",
            out,
            "--top-k",
            "5",
            "--judge-url",
            server.url + "/v1",
            "--judge-model",
            "tiny",
            "--judge-concurrency",
            "2",
            OPENAI_API_KEY="sk-cli",
        )
    assert server.auth == {"Bearer sk-cli"}
    assert "judge: unclear 0%" in proc.stdout and "unparseable answers 0/" in proc.stdout
    interp = load_interpretation(out)
    assert [r.latent for r in interp.latents] == [2, 5]
    for r in interp.latents:
        # No contexts in this store: windows come from the rows themselves, centred on the planted token.
        assert len(r.top) == 5 and all(c.token_ids[c.center] == r.latent for c in r.top)
        assert r.explanation and not r.unclear and r.detection.n > 0
    assert (out / "index.html").exists() and (out / "latents" / "5.html").exists()
    assert json.loads((out / "latents.json").read_text())["meta"]["judge"]["model"] == "tiny"
    found = cli("features", "search", "--index", out, "word")
    assert "2" in found.stdout and "5" in found.stdout
    none = cli("features", "search", "--index", out, "zebra", check=False)
    assert none.returncode == 1 and "no latent matches" in none.stdout
    rebuilt = cli("features", "build", "--from", out / "latents.json", "--index", tmp_path / "idx")
    assert "indexed 2 latents" in rebuilt.stdout and (tmp_path / "idx" / "features.sqlite").exists()


def run_inproc(*args):
    """In-process CLI run (fast: no interpreter start) for argument errors."""
    from typer.testing import CliRunner

    from saeforge.cli import _register, app

    _register()
    return CliRunner().invoke(app, [str(a) for a in args])


def test_interpret_cli_errors_before_work(setup, tmp_path):
    common = ("interpret", "--sae", setup / "sae", "--activations", setup / "store", "--out", tmp_path)
    bad = run_inproc(*common)
    assert bad.exit_code == 2 and "--latents N or --latent-ids" in bad.output
    bad = run_inproc(*common, "--latent-ids", "3,99")
    assert bad.exit_code == 2 and "d_sae=8" in bad.output
    bad = run_inproc(*common, "--latents", "2", "--judge-url", "http://127.0.0.1:9")
    assert bad.exit_code == 2 and "--judge-model" in bad.output
    bad = run_inproc(*common, "--latent-ids", "x")
    assert bad.exit_code == 2 and "comma-separated integers" in bad.output
    assert not (tmp_path / "latents.json").exists()


def test_store_top_contexts_api(setup):
    """The one-call API the report uses: same records as top_contexts over the in-memory rows."""
    from saeforge.interpret import store_top_contexts, top_contexts
    from saeforge.sae import load_sae

    sae = load_sae(setup / "sae")
    got = store_top_contexts(sae, setup / "store", [1, 6], k=4)
    batches, _ = planted_stream(n_seq=60)
    ref = top_contexts(sae, batches, [1, 6], k=4)
    assert [(c.seq, c.pos, c.token_ids) for r in got for c in r.top] == [
        (c.seq, c.pos, c.token_ids) for r in ref for c in r.top
    ]
    assert [r.hist_counts for r in got] == [r.hist_counts for r in ref]


def test_interpret_cli_keeps_judge_answers_and_a_rerun_asks_only_for_the_rest(setup, tmp_path):
    out = tmp_path / "out"
    common = ("interpret", "--sae", setup / "sae", "--activations", setup / "store", "--latent-ids", "2,5")
    common += ("--out", out, "--top-k", "5", "--judge-model", "tiny", "--judge-retries", "0")
    with JudgeServer(fail_after=3) as server:
        failed = run_inproc(*common, "--judge-url", server.url)
    assert failed.exit_code == 1 and "3 judge answers received" in failed.output
    assert "rerun the same command" in failed.output
    partial = load_interpretation(out)
    assert sum(r.explanation is not None for r in partial.latents) == 2, "both explanations were kept"
    with JudgeServer() as server:
        done = run_inproc(*common, "--judge-url", server.url)
        n_rerun = server.n_requests
    assert done.exit_code == 0, done.output
    interp = load_interpretation(out)
    n_total = len(interp.latents) + sum(r.detection.n for r in interp.latents)
    assert n_rerun == n_total - 3
