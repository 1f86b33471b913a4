"""`saeforge eval` of transcoders and crosscoders: aligned stores in, target / per-site FVU (and spliced CE/KL) out."""

from __future__ import annotations

import json

import pytest
import torch

from saeforge.activations.writer import write_store
from saeforge.eval import EvalConfig, run_eval
from saeforge.eval.downstream import contexts_from_source
from saeforge.eval.sites import transcoder_downstream
from saeforge.report.evaluation import comparison_rows, evaluation_section_html
from saeforge.sae import create_training_sae, load_sae, save_sae
from tests.conftest import run_cli

ROWS = 300


def _naive_fvu(y: torch.Tensor, y_hat: torch.Tensor) -> float:
    y, y_hat = y.double(), y_hat.detach().double()
    return float(((y - y_hat) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())


def _save_random(path, kind: str, metadata: dict, **kw):
    sae = create_training_sae(
        dict(architecture="standard", kind=kind, d_sae=24, sparsity_coefficient=1.0, **kw)
    )
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(generator=torch.Generator().manual_seed(p.numel()))
    save_sae(sae.export(1.0), path, metadata=metadata)
    return load_sae(path)


def _stores(root, sites: dict[str, torch.Tensor], token_offset: int = 7):
    """One store per site, all rows from the same (planted) tokens and positions."""
    n = next(iter(sites.values())).shape[0]
    tokens, positions = (
        torch.arange(n) + token_offset,
        torch.stack([torch.arange(n) // 30, torch.arange(n) % 30], 1),
    )
    paths = []
    for hook, x in sites.items():
        paths.append(root / hook.replace(".", "_"))
        write_store(paths[-1], x, hook=hook, shard_rows=128, token_ids=tokens, positions=positions)
    return paths


@pytest.fixture
def transcoder(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(ROWS, 6, generator=g), torch.randn(ROWS, 10, generator=g)
    a, b = _stores(tmp_path, {"layers.0.mlp_in": x, "layers.0.mlp_out": y})
    meta = {"hook_name": "layers.0.mlp_in", "hook_name_out": "layers.0.mlp_out"}
    tc = _save_random(tmp_path / "tc", "transcoder", meta, d_in=6, d_out=10, skip_connection=True)
    return tmp_path / "tc", tc, a, b, x, y


def test_transcoder_target_fvu_on_two_stores_equals_a_float64_reference(transcoder, tmp_path):
    path, tc, a, b, x, y = transcoder
    (r,) = run_eval(EvalConfig(saes=[path], activations=a, target_activations=b, batch_size=64))
    with torch.no_grad():
        ref = _naive_fvu(y, tc(x))
    assert r["kind"] == "transcoder" and r["tokens"] == ROWS and r["target_hook"] == "layers.0.mlp_out"
    assert r["target_fvu"] == r["fvu"] == pytest.approx(ref, rel=1e-9)
    (cut,) = run_eval(EvalConfig(saes=[path], activations=a, target_activations=b, batch_size=64, tokens=100))
    with torch.no_grad():
        assert cut["tokens"] == 100 and cut["fvu"] == pytest.approx(
            _naive_fvu(y[:100], tc(x[:100])), rel=1e-9
        )


def test_stores_that_do_not_fit_the_kind_are_refused_before_reading(transcoder, tmp_path):
    path, _, a, b, x, _ = transcoder
    with pytest.raises(ValueError, match="is a transcoder: give --target-activations STORE, the store of "
                                         "layers.0.mlp_out"):  # fmt: skip
        run_eval(EvalConfig(saes=[path], activations=a))
    with pytest.raises(ValueError, match="expects width 6 at layers.0.mlp_in but the store .* holds d_in 10"):
        run_eval(EvalConfig(saes=[path], activations=b, target_activations=a))
    (stranger,) = _stores(tmp_path / "s", {"layers.0.mlp_out": torch.randn(ROWS, 10)}, token_offset=50)
    with pytest.raises(Exception, match="stores were not captured together: row 0"):
        run_eval(EvalConfig(saes=[path], activations=a, target_activations=stranger))
    cc = tmp_path / "cc"
    _save_random(cc, "crosscoder", {}, d_in=6, n_sites=2, sites=["p", "q"])
    with pytest.raises(ValueError, match=r"crosscoder .* reads 2 sites \(p, q\): give one --activations store "
                                         r"per site, in that order \(1 given\)"):  # fmt: skip
        run_eval(EvalConfig(saes=[cc], activations=a))
    with pytest.raises(ValueError, match="is a crosscoder .*: drop --target-activations"):
        run_eval(EvalConfig(saes=[cc], activations=[a, a], target_activations=b))
    with pytest.raises(ValueError, match="evaluate SAEs, transcoders and crosscoders in separate runs"):
        run_eval(EvalConfig(saes=[cc, path], activations=[a, a]))


def test_crosscoder_fvu_per_site_through_the_cli_and_the_report(tmp_path):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(ROWS, 2, 5, generator=g)
    a, b = _stores(tmp_path, {"layers.0.resid_post": x[:, 0], "layers.1.resid_post": x[:, 1]})
    sites = ["layers.0.resid_post", "layers.1.resid_post"]
    cc = _save_random(tmp_path / "cc", "crosscoder", {}, d_in=5, n_sites=2, sites=sites)
    with pytest.raises(ValueError, match="expects 'layers.0.resid_post' where the store .* holds "
                                         "'layers.1.resid_post'"):  # fmt: skip
        run_eval(EvalConfig(saes=[tmp_path / "cc"], activations=[b, a]))
    out = tmp_path / "eval"
    proc = run_cli("eval", "--sae", str(tmp_path / "cc"), "--activations", str(a), "--activations", str(b),
                   "--out", str(out), "--batch-rows", "64", "--device", "cpu")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = json.loads((out / "cc" / "metrics.json").read_text())
    with torch.no_grad():
        x_hat = cc(x)
    for s, site in enumerate(sites):
        assert m[f"fvu.{site}"] == pytest.approx(_naive_fvu(x[:, s], x_hat[:, s]), rel=1e-9)
    assert m["fvu"] == pytest.approx(_naive_fvu(x.flatten(1), x_hat.flatten(1)), rel=1e-9)
    table = json.loads((out / "comparison.json").read_text())
    assert table[0]["fvu.layers.0.resid_post"] == pytest.approx(m["fvu.layers.0.resid_post"])
    assert "fvu.layers.1.resid_post" in (out / "comparison.csv").read_text().splitlines()[0]


def test_report_shows_target_and_site_columns_only_when_measured():
    results = [
        {"name": "tc", "fvu": 0.2, "target_fvu": 0.2, "l0": 3.0, "verdict": "good"},
        {"name": "cc", "fvu": 0.3, "fvu.a": 0.25, "fvu.b": 0.35, "l0": 4.0, "verdict": "good"},
    ]
    rows = comparison_rows(results)
    assert list(rows[0])[-3:] == ["target_fvu", "fvu.a", "fvu.b"]
    assert rows[0]["fvu.a"] is None and rows[1]["fvu.b"] == 0.35 and rows[1]["target_fvu"] is None
    section = evaluation_section_html(results)
    assert "<th>fvu.b</th>" in section and "<th>target_fvu</th>" in section and "0.35" in section
    assert "fvu." not in evaluation_section_html(results[:1]).replace("target_fvu", "")


def test_spliced_transcoder_metrics_equal_the_direct_replacement(tiny_model, tmp_path):
    """run_eval with --model: the CE/KL of sites.transcoder_downstream at the transcoder's layer, with the
    target store's mean as the mean ablation."""
    from saeforge.models import load_model

    loaded = load_model(tiny_model("gpt2"))
    d = loaded.d_model
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(200, d, generator=g), 0.1 * torch.randn(200, d, generator=g) + 0.05
    a, b = _stores(tmp_path, {"layers.1.mlp_in": x, "layers.1.mlp_out": y})
    meta = {"hook_name": "layers.1.mlp_in", "hook_name_out": "layers.1.mlp_out"}
    tc = _save_random(tmp_path / "tc", "transcoder", meta, d_in=d, d_out=d)
    cfg = EvalConfig(saes=[tmp_path / "tc"], activations=a, target_activations=b, model=tiny_model("gpt2"),
                     data="builtin:heldout", contexts=4, context_size=32, device="cpu")  # fmt: skip
    (r,) = run_eval(cfg)
    tokens, special = contexts_from_source("builtin:heldout", loaded.tokenizer, 32, 4)
    want = transcoder_downstream(tc, loaded, tokens, special, layer=1, mean_output=y.double().mean(0).float())
    for key in (
        "ce_loss_with_transcoder",
        "kl_div_with_transcoder",
        "ce_loss_mean_ablation",
        "ce_loss_score",
    ):
        assert r[key] == pytest.approx(want[key], rel=1e-6), key
    assert r["ce_loss_mean_ablation"] != r["ce_loss_zero_ablation"]
    wrong = tmp_path / "wrong"
    save_sae(tc, wrong, metadata={"hook_name": "layers.1.mlp_in", "hook_name_out": "layers.2.mlp_out"})
    with pytest.raises(ValueError, match="needs a transcoder from layers.N.mlp_in to layers.N.mlp_out"):
        run_eval(cfg.model_copy(update={"saes": [wrong]}))


def _planted_crosscoders(tmp_path):
    """Two crosscoders over 2 sites (d_in 8, 4 latents). A latent i writes e_i at site 0 and e_{i+4} at site 1.
    Seed B finds latents 0 and 1 again (swapped); latents 2 and 3 agree with A at site 0 but write the opposite
    direction at site 1, so concatenated over sites they are orthogonal to every latent of A."""
    from saeforge.sae.base import SAEConfig
    from saeforge.sae.crosscoder import CrossCoder

    eye = torch.eye(8)
    dec_a = torch.stack([torch.stack([eye[i], eye[i + 4]]) for i in range(4)])
    dec_b = dec_a[[1, 0, 2, 3]].clone()
    dec_b[2:, 1] *= -1
    sites = ["layers.0.resid_post", "layers.1.resid_post"]
    paths = []
    for name, dec in (("a", dec_a), ("b", dec_b)):
        cc = CrossCoder(SAEConfig(architecture="crosscoder", d_in=8, d_sae=4, n_sites=2, sites=sites))
        with torch.no_grad():
            cc.W_dec.copy_(dec)
            cc.W_enc.copy_(dec.permute(1, 2, 0))
        paths.append(save_sae(cc, tmp_path / name))
    return paths, sites, dec_a, dec_b


def test_crosscoder_stability_matches_decoders_concatenated_over_sites(tmp_path):
    from saeforge.eval.dictionary import stability

    paths, sites, dec_a, dec_b = _planted_crosscoders(tmp_path)
    got = stability(dec_a, dec_b)
    assert got == {"stability_match_fraction": 0.5, "stability_hungarian_cosine": pytest.approx(0.5)}
    # Site by site, every latent would look found again: the concatenation is what tells them apart.
    assert stability(dec_a[:, 0], dec_b[:, 0])["stability_match_fraction"] == 1.0
    x = torch.randn(ROWS, 2, 8, generator=torch.Generator().manual_seed(3))
    stores = _stores(tmp_path, {sites[0]: x[:, 0], sites[1]: x[:, 1]})
    results = run_eval(EvalConfig(saes=paths, activations=stores, batch_size=128))
    for r in results:
        assert r["stability_partners"] == 1 and r["stability_match_fraction"] == 0.5
        assert r["stability_hungarian_cosine"] == pytest.approx(0.5)
