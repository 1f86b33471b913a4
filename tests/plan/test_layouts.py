"""The layout planner's formulas (saeforge/plan/layouts.py, docs/training.md) against values worked by hand."""

from __future__ import annotations

import pytest

from saeforge.plan import DeviceSpec, Layout, parse_layout, plan_layout, plan_layouts
from saeforge.plan.devices import gpu_presets
from saeforge.plan.layouts import layouts_up_to

# Round rates so that every term below is a short hand calculation.
DEV = DeviceSpec(
    name="round",
    memory_bytes=896 / 0.9,
    gemm_flops=1e9,
    memory_bytes_per_s=1e9,
    link_bytes_per_s=1e6,
    node_link_bytes_per_s=1e5,
    link_latency_s=0.0,
    devices_per_node=4,
)


def test_a_2x2_layout_matches_the_hand_computed_terms():
    # d_in 4, d_sae 8, k 2, B 4 on T=2 x D=2: s = 4 latents and b = 2 rows per rank,
    # P = 2*4*4 + 4 + 4 = 40 local parameters.
    p = plan_layout(
        Layout(2, 2), d_in=4, d_sae=8, k=2, batch=4, tokens=40, device=DEV, price_per_device_hour=9.0
    )
    assert p.weight_bytes == 160 and p.adam_bytes == 320
    assert p.grad_bytes == 160  # gradients only: DDP reduces them in place (no flat buffer)
    assert p.activation_bytes == 4 * 2 * (2 * 4 + 3 * 4) + 12 * 2 * 2 * 2  # 160 + 96
    assert p.memory_bytes == 896 and p.fits
    assert p.gemm_s == pytest.approx(2 * 2 * 4 * 4 / 1e9)
    assert p.sparse_s == pytest.approx(6 * 4 * 2 * 1 * 4 / 1e9)  # k / T = 1 local pair per row
    assert p.select_s == pytest.approx(2 * 4 * 2 * 4 / 1e9)
    assert p.update_s == pytest.approx((32 * 40 + 32 * 16) / 1e9)
    assert p.tp_comm_s == pytest.approx(12 * 2 * 2 / 1e6 + 2 * (4 * 2 * 4 / 2) / 1e6)  # gather + all-reduce
    assert p.dp_comm_s == pytest.approx(2 * (4 * 40 / 2) / 1e6)  # 4 ranks share a node: the fast link
    step = 64e-9 + 192e-9 + 64e-9 + 1792e-9 + 80e-6 + 160e-6
    assert p.step_s == pytest.approx(step)
    assert p.steps == 10 and p.wall_s == pytest.approx(10 * step)
    assert p.cost == pytest.approx(10 * step / 3600 * 4 * 9.0)


def test_groups_that_leave_the_node_use_the_slower_link_and_memory_decides_fit():
    small_node = DEV.model_copy(update={"devices_per_node": 2})
    p = plan_layout(Layout(2, 2), 4, 8, 2, 4, 40, small_node)
    assert p.tp_comm_s == pytest.approx(80e-6)  # ranks 0,1 share a node
    assert p.dp_comm_s == pytest.approx(2 * (4 * 40 / 2) / 1e5)  # ranks 0,2 do not
    tight = DEV.model_copy(update={"memory_bytes": 895 / 0.9})
    assert not plan_layout(Layout(2, 2), 4, 8, 2, 4, 40, tight).fits
    one = plan_layout(Layout(1, 1), 4, 8, 2, 4, 40, DEV)
    assert one.tp_comm_s == 0 and one.dp_comm_s == 0 and one.grad_bytes == 4 * (2 * 4 * 8 + 8 + 4)


def test_the_seed_case_fits_where_the_memory_allows():
    # Llama-70B residual: d_model 8192, 32x = 262,144 latents, k 64, 4096-token batches.
    h100, h200 = gpu_presets()["h100-80gb"], gpu_presets()["h200-141gb"]
    args = dict(d_in=8192, d_sae=262_144, k=64, batch=4096, tokens=10**9)
    one_h100 = plan_layout(Layout(1, 1), device=h100, **args)
    assert one_h100.weight_bytes == 4 * (2 * 8192 * 262_144 + 262_144 + 8192)
    assert not one_h100.fits and plan_layout(Layout(1, 1), device=h200, **args).fits
    sharded = plan_layout(Layout(4, 1), device=h100, **args)
    assert sharded.fits and sharded.weight_bytes < one_h100.weight_bytes / 3.9
    assert sharded.step_s < one_h100.step_s


def test_layouts_are_enumerated_and_checked():
    assert [str(x) for x in layouts_up_to(4)] == ["1x1", "1x2", "2x1", "1x4", "2x2", "4x1"]
    assert parse_layout(" 4x2 ") == Layout(4, 2)
    with pytest.raises(ValueError, match="TxD"):
        parse_layout("4*2")
    with pytest.raises(ValueError, match="does not divide d_sae"):
        plan_layouts(4, 8, 2, 4, 40, DEV, layouts=[Layout(3, 1)])
    auto = plan_layouts(
        4, 8, 2, 4, 40, DEV, max_devices=8
    )  # 8x1 leaves 1 latent < k, 1x8 splits 4 rows 8 ways
    assert {str(p.layout) for p in auto} == {"1x1", "1x2", "2x1", "1x4", "2x2", "4x1", "2x4", "4x2"}


def _invoke(*args):
    from typer.testing import CliRunner

    from saeforge.cli import _register, app

    _register()
    return CliRunner().invoke(app, [str(a) for a in args])


def test_plan_prints_layouts_of_the_seed_case_and_which_fit():
    res = _invoke(
        "plan",
        "--d-in",
        8192,
        "--d-sae",
        262144,
        "--k",
        64,
        "--tokens",
        2_000_000_000,
        "--device-spec",
        "h100-80gb",
        "--layout",
        "1x1",
        "--layout",
        "4x1",
        "--price-per-device-hour",
        2.5,
    )
    assert res.exit_code == 0, res.output
    rows = {line.split()[0]: line for line in res.output.splitlines() if line.strip()[:3] in ("1x1", "4x1")}
    assert " NO " in rows["1x1"] and " yes " in rows["4x1"]
    p = plan_layout(Layout(4, 1), 8192, 262144, 64, 4096, 2_000_000_000, gpu_presets()["h100-80gb"], 2.5)
    assert f"{p.cost:,.2f}" in rows["4x1"] and "fastest that fits: 4x1" in res.output
    assert "not measured here" in res.output


def test_plan_rejects_a_layout_that_cannot_run_and_a_missing_width():
    bad = _invoke(
        "plan", "--d-in", 64, "--d-sae", 100, "--tokens", 10**6, "--device-spec", "b200", "--layout", "3x1"
    )
    assert bad.exit_code == 2 and "does not divide d_sae=100" in bad.output
    none = _invoke("plan", "--tokens", 10**6, "--device-spec", "b200")
    assert none.exit_code == 2 and "--d-in" in none.output
    unknown = _invoke("plan", "--d-in", 64, "--tokens", 10**6, "--device-spec", "tpu")
    assert unknown.exit_code == 2 and "not a preset" in unknown.output
