"""Per-key GPU budgets (GATEWAY_KEY_POLICY: gpu_hours_per_day, gpu_hours_per_month,
usd_per_day, usd_per_month), per UTC day and month. Pure: the amounts spent come from the
shared ledger (proxy.ledger), the decision from here.

A budget is checked when a request arrives, never while one streams: a key that goes over
mid-stream finishes that answer, and its next request is refused with 429 until the reset.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass

from config import KeyPolicy
from proxy.policy import Refusal


@dataclass(frozen=True)
class Spent:
    """What one key has spent: GPU-seconds and estimated dollars, today and this month (UTC)."""

    seconds_day: float = 0.0
    seconds_month: float = 0.0
    usd_day: float = 0.0
    usd_month: float = 0.0


def next_day(now: float) -> float:
    """The next UTC midnight, as a timestamp."""
    return (int(now) // 86400 + 1) * 86400.0


def next_month(now: float) -> float:
    """The first instant of the next UTC month, as a timestamp."""
    t = time.gmtime(now)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return float(calendar.timegm((year, month, 1, 0, 0, 0)))


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def budget_refusal(name: str, policy: KeyPolicy, spent: Spent, now: float) -> Refusal | None:
    """Why key `name` may not start a request now (None: it may): the first budget it has
    used up, which, and when it resets. Retry-After is the seconds until then."""
    checks = (
        ("gpu_hours_per_day", policy.gpu_hours_per_day, spent.seconds_day / 3600, "GPU-hours", "today", next_day(now)),
        ("usd_per_day", policy.usd_per_day, spent.usd_day, "dollars of GPU time", "today", next_day(now)),
        ("gpu_hours_per_month", policy.gpu_hours_per_month, spent.seconds_month / 3600, "GPU-hours", "this month", next_month(now)),
        ("usd_per_month", policy.usd_per_month, spent.usd_month, "dollars of GPU time", "this month", next_month(now)),
    )
    for budget, limit, used, unit, period, resets in checks:
        if limit is not None and used >= limit:
            message = (
                f"key {name!r} has used its GPU budget {budget} ({used:.4g} of {limit:g} {unit} {period}, UTC): "
                f"it resets at {_iso(resets)}"
            )
            return Refusal(message, max(1, int(resets - now + 0.999)))
    return None


def has_budget(policy: KeyPolicy) -> bool:
    return any(v is not None for v in (policy.gpu_hours_per_day, policy.gpu_hours_per_month, policy.usd_per_day, policy.usd_per_month))
