"""`saeforge interpret` on a crosscoder (aligned stores, one per site) and a transcoder (its input site's store)."""

from __future__ import annotations

import pytest
import torch

from saeforge.activations.writer import write_store
from saeforge.interpret.pipeline import output_directions
from saeforge.interpret.records import load_interpretation
from saeforge.sae import load_sae, save_sae
from saeforge.sae.base import SAEConfig
from saeforge.sae.crosscoder import CrossCoder
from saeforge.sae.transcoder import Transcoder
from tests.interpret.test_cli_interpret import run_inproc

D, ROWS, SITES = 4, 400, ["layers.0.resid_post", "layers.2.resid_post"]


def said(result) -> str:
    """The CLI's message with the error box's borders and line breaks taken out."""
    return " ".join(result.output.replace("│", " ").split())


def planted_sites(seed: int = 0):
    """Token t < D puts 1 + noise on dimension t of both sites; other tokens put nothing. Row r is token r's."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 3 * D, (ROWS,), generator=g)
    x = torch.zeros(ROWS, 2, D)
    on = tokens < D
    x[on, 0, tokens[on]] = 1 + torch.rand(int(on.sum()), generator=g)
    x[on, 1, tokens[on]] = 1 + torch.rand(int(on.sum()), generator=g)
    positions = torch.stack([torch.arange(ROWS) // 40, torch.arange(ROWS) % 40], 1)
    return x, tokens, positions


def write_sites(root, x, tokens, positions, hooks):
    paths = []
    for s, hook in enumerate(hooks):
        paths.append(root / f"site{s}")
        write_store(paths[-1], x[:, s], hook=hook, shard_rows=128, token_ids=tokens, positions=positions)
    return paths


@pytest.fixture
def crosscoder_run(tmp_path):
    x, tokens, positions = planted_sites()
    stores = write_sites(tmp_path, x, tokens, positions, SITES)
    cfg = SAEConfig(
        architecture="crosscoder", d_in=D, d_sae=D, n_sites=2, sites=SITES, apply_b_dec_to_input=False
    )
    cc = CrossCoder(cfg)
    with torch.no_grad():
        # Latent i reads dimension i of both sites and fires only where their sum passes 1.5: no one site does.
        cc.W_enc[0].copy_(torch.eye(D))
        cc.W_enc[1].copy_(torch.eye(D))
        cc.b_enc.fill_(-2.5)
        cc.W_dec[:, 0].copy_(torch.eye(D))
        cc.W_dec[:, 1].copy_(3 * torch.eye(D))
    save_sae(cc, tmp_path / "cc")
    return tmp_path, stores, x, tokens


def test_crosscoder_latents_come_from_all_sites_and_the_page_shows_each_site(crosscoder_run):
    root, stores, x, tokens = crosscoder_run
    out = root / "out"
    args = ("interpret", "--sae", root / "cc", "--activations", stores[0], "--activations", stores[1])
    done = run_inproc(*args, "--latent-ids", "0,2", "--out", out, "--top-k", "3", "--no-logits")
    assert done.exit_code == 0, done.output
    interp = load_interpretation(out)
    with torch.no_grad():
        z = load_sae(root / "cc").encode(x)  # the reference: the crosscoder on the stacked sites
    for rec in interp.latents:
        col = z[:, rec.latent]
        assert rec.n_active == int((col > 0).sum()) > 0
        assert rec.max_activation == pytest.approx(float(col.max()))
        assert all(tokens[c.seq * 40 + c.pos] == rec.latent for c in rec.top)
        assert [(w.site, w.reads, w.writes) for w in rec.sites] == [
            (SITES[0], pytest.approx(1.0), pytest.approx(1.0)),
            (SITES[1], pytest.approx(1.0), pytest.approx(3.0)),
        ]
    assert interp.meta["kind"] == "crosscoder" and interp.meta["sites"] == SITES
    page = (out / "latents" / "2.html").read_text()
    assert "<h2>Sites</h2>" in page and "75%" in page and "25%" in page and SITES[1] in page

    wrong = run_inproc(
        *args[:4], stores[1], "--activations", stores[0], "--latents", "2", "--out", root / "o2"
    )
    assert wrong.exit_code == 2 and "reads the sites" in said(wrong)
    one = run_inproc(*args[:5], "--latents", "2", "--out", root / "o3")
    assert one.exit_code == 2 and "one --activations store per site, in the order" in said(one)


def test_crosscoder_refuses_stores_not_captured_together(crosscoder_run):
    root, stores, x, tokens = crosscoder_run
    (other,) = write_sites(
        root / "b", x[:, 1:], tokens.roll(1), torch.zeros(ROWS, 2, dtype=torch.long), SITES[1:]
    )
    bad = run_inproc("interpret", "--sae", root / "cc", "--activations", stores[0], "--activations", other,
                     "--latents", "2", "--out", root / "o")  # fmt: skip
    assert bad.exit_code == 2 and "not captured together" in said(bad)


def test_transcoder_contexts_come_from_its_input_site(tmp_path):
    x, tokens, positions = planted_sites(1)
    hooks = ["layers.1.mlp_in", "layers.1.mlp_out"]
    stores = write_sites(tmp_path, x, tokens, positions, hooks)
    cfg = SAEConfig(architecture="transcoder", d_in=D, d_sae=D, d_out=D, metadata={})
    tc = Transcoder(cfg)
    with torch.no_grad():
        tc.W_enc.copy_(2 * torch.eye(D))
        tc.b_enc.fill_(-1.0)
        tc.W_dec.copy_(0.5 * torch.eye(D).roll(1, 0))
    save_sae(tc, tmp_path / "tc", metadata={"hook_name": hooks[0], "hook_name_out": hooks[1]})
    out = tmp_path / "out"
    done = run_inproc("interpret", "--sae", tmp_path / "tc", "--activations", stores[0], "--latent-ids", "1",
                      "--out", out, "--no-logits")  # fmt: skip
    assert done.exit_code == 0, done.output
    (rec,) = load_interpretation(out).latents
    assert rec.n_active == int((x[:, 0, 1] > 0.5).sum())
    assert [(w.site, w.reads, w.writes) for w in rec.sites] == [
        (hooks[0], pytest.approx(2.0), None),
        (hooks[1], None, pytest.approx(0.5)),
    ]
    assert "<h2>Sites</h2>" in (out / "latents" / "1.html").read_text()
    wrong = run_inproc("interpret", "--sae", tmp_path / "tc", "--activations", stores[1], "--latents", "1",
                       "--out", tmp_path / "o2")  # fmt: skip
    assert wrong.exit_code == 2 and "its latents come from its input" in said(wrong)


def test_logit_directions_of_a_crosscoder_are_its_last_sites_decoder():
    cfg = SAEConfig(architecture="crosscoder", d_in=3, d_sae=5, n_sites=2, sites=["a", "b"])
    cc = CrossCoder(cfg)
    with torch.no_grad():
        cc.W_dec.normal_(generator=torch.Generator().manual_seed(0))
    assert torch.equal(output_directions(cc, [4, 1]), cc.W_dec.detach()[[4, 1], 1])
