"""Renders a benchmark result dict as Markdown tables (what `python -m bench` prints and docs/benchmarks.md holds).

Phase floors of a TopK-family step (B tokens, d_in, d_sae, k; GEMM rate and copy bandwidth measured in the run):
- encoder matmul: 2 B d_in d_sae FLOPs;
- top-k selection: one read of the [B, d_sae] pre-activations;
- sparse decode: read W_dec once, write [B, d_in];
- backward: max(4 x 2 B k d_in FLOPs for grad x, W_enc, W_dec and vals; read W_enc, W_dec + write their
  gradients);
- decoder grad projection: read W_dec and its gradient, write the gradient;
- optimizer: Adam reads parameter, gradient and two moments and writes three: 28 bytes per parameter;
- renormalise: read and write W_dec.
"""

from __future__ import annotations

GIB = 1024**3


def phase_floors(shape: dict, gflops: float, gbytes_per_s: float) -> dict[str, float]:
    """Seconds each phase of a TopK-family step needs at the measured GEMM rate and copy bandwidth."""
    B, d_in, d_sae, k = shape["B"], shape["d_in"], shape["d_sae"], shape["k"]
    f = 4.0
    W = f * d_in * d_sae
    flop = lambda n: n / (gflops * 1e9)  # noqa: E731
    byte = lambda n: n / (gbytes_per_s * 1e9)  # noqa: E731
    return {
        "encoder matmul": flop(2.0 * B * d_in * d_sae),
        "top-k selection": byte(f * B * d_sae),
        "gather pre-acts": byte(f * B * k),
        "sparse decode": max(flop(2.0 * B * k * d_in), byte(W + f * B * d_in)),
        "backward": max(flop(8.0 * B * k * d_in), byte(4 * W)),
        "decoder grad projection": byte(3 * W),
        "optimizer": byte(28.0 * (2 * d_in * d_sae + d_sae + d_in)),
        "renormalise + zero_grad": byte(2 * W),
    }


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f}" if seconds >= 0.0995 else f"{seconds * 1e3:.1f}"


def render(results: dict) -> str:
    m = results["machine"]
    out = [
        f"saeforge benchmarks: {m['date_utc']}, {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']} "
        f"({m['torch_threads']} threads), load average {m['load_average_1_5_15']}, "
        f"THP_MEM_ALLOC_ENABLE={m['thp_mem_alloc']}",
        f"command: `{results['command']}`",
        "",
    ]
    shapes = results["shapes"]
    floor_rows = []
    for name, fl in results["floors"].items():
        s = shapes[name]
        g = fl["gemm"]
        floor_rows.append(
            [
                name,
                f"B={s['B']} d_in={s['d_in']} d_sae={s['d_sae']} k={s['k']}",
                f"{_ms(g['seconds'])} ms",
                f"{g['gflops']:.0f}",
                f"{s['B'] / g['seconds']:.0f}",
                f"{fl['copy']['gbytes_per_s']:.1f}",
            ]
        )
    out += [
        "### Floors measured in this run",
        _table(["shape", "", "encoder GEMM", "GFLOP/s", "GEMM-floor tokens/s", "copy GB/s"], floor_rows),
        "",
    ]

    if results.get("training"):
        plain = {
            (r["shape"], r["arch"]): r["tokens_per_s"] for r in results["training"] if r["impl"] == "plain"
        }
        rows = []
        for r in results["training"]:
            shape = shapes[r["shape"]]
            floor = shape["B"] / results["floors"][r["shape"]]["gemm"]["seconds"]
            st = r["step"]
            ref = plain.get((r["shape"], r["arch"]))
            rows.append(
                [
                    r["shape"],
                    r["arch"],
                    r["impl"],
                    r["adam"],
                    f"{r['tokens_per_s']:.0f}",
                    f"{_ms(st['median'])} ({_ms(st['min'])}-{_ms(st['max'])})",
                    f"{r['tokens_per_s'] / ref:.2f}x" if ref and r["impl"] != "plain" else "",
                    f"{r['tokens_per_s'] / floor:.2f}",
                ]
            )
        out += [
            "### Training steps (forward, backward, hooks, Adam, renormalisation)",
            _table(
                [
                    "shape",
                    "arch",
                    "impl",
                    "adam",
                    "tokens/s",
                    "step ms median (min-max)",
                    "vs plain",
                    "/ floor",
                ],
                rows,
            ),
            "",
        ]

    for r in results.get("phases") or []:
        shape = shapes[r["shape"]]
        fl = results["floors"][r["shape"]]
        floors = phase_floors(shape, fl["gemm"]["gflops"], fl["copy"]["gbytes_per_s"])
        total = sum(r["phases"].values())
        rows = [
            [name, _ms(sec), f"{100 * sec / total:.0f}%", _ms(floors[name]) if name in floors else ""]
            for name, sec in r["phases"].items()
        ]
        rows.append(["total (instrumented)", _ms(total), "100%", _ms(sum(floors.values()))])
        out += [
            f"### Phases of a saeforge {r['arch']} step ({r['shape']}, adam={r['adam']}; ms, medians)",
            _table(["phase", "ms", "share", "floor ms"], rows),
            "",
        ]

    if results.get("adam"):
        rows = [
            [kind, f"{_ms(t['median'])} ({_ms(t['min'])}-{_ms(t['max'])})"]
            for kind, t in results["adam"].items()
        ]
        out += [
            "### Adam step alone (TopK parameters at the main shape; ms)",
            _table(["adam", "ms"], rows),
            "",
        ]

    if results.get("memory"):
        rows = [
            [
                r["arch"],
                f"{r['weights_and_adam_bytes'] / GIB:.2f}",
                f"{r['baseline_rss_bytes'] / GIB:.2f}",
                f"{r['peak_rss_bytes'] / GIB:.2f}",
                f"{r['step_peak_over_baseline_gib']:.2f}",
            ]
            for r in results["memory"]
        ]
        out += [
            "### Peak memory of a step (fresh process, resident set size; GiB)",
            _table(["arch", "weights + Adam", "RSS after setup", "peak RSS", "step peak above setup"], rows),
            "",
        ]

    loop = results.get("loop")
    if loop:
        out += [
            "### Whole training loop with data loading",
            _table(
                ["measure", "value"],
                [[k, f"{v:.3g}" if isinstance(v, float) else str(v)] for k, v in loop.items()],
            ),
            "",
        ]
    ev = results.get("eval")
    if ev:
        out += [
            "### Evaluation throughput (saeforge.eval.evaluate, exported TopK SAE, activations only)",
            _table(
                ["streaming tokens/s", "fixed cost s (decoder cosines)"],
                [[f"{ev['streaming_tokens_per_s']:.0f}", f"{ev['fixed_s']:.2f}"]],
            ),
            "",
        ]
    for name in ("store", "architectures"):
        if results.get(name):
            text = results[name].get("stdout") or results[name].get("error", "")
            out += [f"### {name} (its own script's output)", "```", text.strip(), "```", ""]
    return "\n".join(out)
