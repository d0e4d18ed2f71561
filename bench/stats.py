"""Percentiles and pooling of load-generator results."""

from __future__ import annotations

import math


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between closest ranks; None for no data."""
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def median(values: list[float | None]) -> float | None:
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def summarise(runs: list[dict]) -> dict:
    """One target's rounds: each latency percentile is taken per round, then the median
    across rounds (one round disturbed by other work on the machine does not decide it);
    CPU seconds and tokens are summed over the rounds."""
    lines = sum(r["lines"] for r in runs)
    failures: dict[str, int] = {}
    for r in runs:
        for k, n in r["failures"].items():
            failures[k] = failures.get(k, 0) + n
    cpu = {k: sum(r["cpu"][k] for r in runs) for k in runs[0]["cpu"]}
    wall = sum(r["wall"] for r in runs)
    per_round = {
        f"{name}_p{q}": [pct(r[key], q) for r in runs]
        for name, key in (("ttfb", "ttfb"), ("gap", "gaps"), ("lat", "latency"))
        for q in (50, 99)
    }
    return {
        "rounds": len(runs),
        "streams": sum(r["streams"] for r in runs),
        "ok": sum(r["ok"] for r in runs),
        "failures": failures,
        "lines": lines,
        **{k: median(v) for k, v in per_round.items()},
        "per_round": per_round,
        "gap_max": max((max(r["gaps"]) for r in runs if r["gaps"]), default=None),
        "cpu": cpu,
        "cpu_per_1k": {k: (v / lines * 1000 if lines else None) for k, v in cpu.items()},
        "cpu_util": {k: v / wall for k, v in cpu.items()},
        "background_util": sum(r.get("background_cpu", 0.0) for r in runs) / wall,
        "steal_util": sum(r.get("steal", 0.0) for r in runs) / wall,
        "client_lag_p99": [r.get("client_lag_p99") for r in runs],
        "client_lag_max": max((r.get("client_lag_max", 0.0) for r in runs), default=0.0),
        "peak_rss_kb": {k: max(r["peak_rss_kb"][k] for r in runs) for k in runs[0]["peak_rss_kb"]},
        "listen_drops": {k: sum(r["listen_drops"].get(k, 0) for r in runs) for k in runs[0]["listen_drops"]},
        "wall": wall,
    }
