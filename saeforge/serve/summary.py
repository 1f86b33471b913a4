"""Aggregates of an audit log for `saeforge audit report`: features per variant, per API key and over time.

A feature's `mean_max` in a group is the mean, over the group's requests whose record lists it among their top
features, of its max activation on that request; `requests` counts those requests.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FeatureStat:
    sae: str
    latent: int
    label: str | None
    requests: int
    mean_max: float


@dataclass
class Group:
    name: str
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    features: list[FeatureStat] = field(default_factory=list)


@dataclass
class Summary:
    """groups: all, then per variant, then per key. series: per time bucket (start, requests, {feature: mean_max})
    for the `tracked` features (the most frequent overall)."""

    records: int
    groups: list[Group]
    tracked: list[str]
    buckets: list[float]
    requests_per_bucket: list[int]
    series: dict[str, list[float | None]]


def _parse_time(t: str) -> float:
    return calendar.timegm(time.strptime(t[:19], "%Y-%m-%dT%H:%M:%S")) + float(
        "0" + t[19:-1] if len(t) > 20 else 0
    )


def _features(rec: dict[str, Any]):
    for entry in rec.get("features") or []:
        for f in entry.get("top", []):
            yield (entry["sae"], int(f["latent"])), float(f["max"]), f.get("label")


def _group(name: str, records: list[dict[str, Any]], top: int) -> Group:
    g = Group(name, requests=len(records))
    acc: dict[tuple[str, int], list] = {}
    for rec in records:
        if (rec.get("status") or 0) >= 400:
            g.errors += 1
        tokens = rec.get("tokens") or {}
        g.tokens += int(tokens.get("prompt", 0)) + int(tokens.get("completion", 0))
        for key, mx, label in _features(rec):
            a = acc.setdefault(key, [0, 0.0, label])
            a[0] += 1
            a[1] += mx
    ranked = sorted(acc.items(), key=lambda kv: (-kv[1][0], -kv[1][1] / kv[1][0], kv[0]))
    g.features = [FeatureStat(k[0], k[1], a[2], a[0], a[1] / a[0]) for k, a in ranked[:top]]
    return g


def summarise(
    records: list[dict[str, Any]], bucket_s: float = 3600.0, top: int = 10, tracked: int = 5
) -> Summary:
    """Summary of audit records (as `read_records` returns them)."""
    gen = [
        r
        for r in records
        if r.get("endpoint") in ("/v1/completions", "/v1/chat/completions", "/v1/embeddings")
    ]
    groups = [_group("all requests", records, top)]
    variants = sorted({r.get("variant") or "" for r in gen})
    groups += [
        _group(f"variant: {v or '(base model)'}", [r for r in gen if (r.get("variant") or "") == v], top)
        for v in variants
    ]
    keys = sorted({r.get("key_id") or "" for r in records})
    groups += [
        _group(f"key: {k or '(no key)'}", [r for r in records if (r.get("key_id") or "") == k], top)
        for k in keys
    ]
    names = [f"{f.sae}:{f.latent}" for f in groups[0].features[:tracked]]
    times = [_parse_time(r["time"]) for r in records if r.get("time")]
    buckets: list[float] = []
    per_bucket: list[int] = []
    series: dict[str, list[float | None]] = {n: [] for n in names}
    if times:
        t0 = min(times) - min(times) % bucket_s
        n_buckets = int((max(times) - t0) // bucket_s) + 1
        binned: list[list[dict]] = [[] for _ in range(n_buckets)]
        for rec in records:
            if rec.get("time"):
                binned[int((_parse_time(rec["time"]) - t0) // bucket_s)].append(rec)
        for i, recs in enumerate(binned):
            buckets.append(t0 + i * bucket_s)
            per_bucket.append(len(recs))
            stats = {f"{f.sae}:{f.latent}": f.mean_max for f in _group("", recs, 10**9).features}
            for n in names:
                series[n].append(stats.get(n))
    return Summary(len(records), groups, names, buckets, per_bucket, series)
