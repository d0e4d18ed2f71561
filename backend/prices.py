"""What a garden costs on Modal: a small, dated table of list prices.

Modal bills per second of a container's life; these are its list prices per hour
(per-second price x 3600), as published at https://modal.com/pricing. They change: the
date says when they were read, and the deploy summary names it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from backend.warm import parse_schedule

PRICES_DATE = "2026-05"
PRICES_SOURCE = "https://modal.com/pricing"

# US dollars per GPU per hour.
GPU_PER_HOUR = {
    "T4": 0.59,
    "L4": 0.80,
    "A10": 1.10,
    "A10G": 1.10,
    "L40S": 1.95,
    "A100": 2.10,  # Modal's "A100" is the 40 GB card
    "A100-40GB": 2.10,
    "A100-80GB": 2.50,
    "H100": 3.95,
    "H200": 4.54,
    "B200": 6.25,
}
CPU_CORE_PER_HOUR = 0.047  # per physical core
MEMORY_GIB_PER_HOUR = 0.008

# A function that asks for no CPU or memory (the gateway) is billed at least Modal's
# default reservation of 0.125 cores and 128 MiB while a container is up.
GATEWAY_CORES = 0.125
GATEWAY_MEMORY_GIB = 0.125
# Modal's price for CPU and memory on capacity it never preempts (GATEWAY_NONPREEMPTIBLE):
# https://modal.com/docs/guide/preemption.
NONPREEMPTIBLE_MULTIPLIER = 3


def gpu_per_hour(gpu: str) -> float | None:
    """`L4` -> 0.80, `H100:2` -> 7.90 (US dollars an hour); None for a type not in the
    table (`ANY`: Modal picks the card, so its price is not known here)."""
    kind, _, count = gpu.partition(":")
    price = GPU_PER_HOUR.get(kind.upper().rstrip("!"))  # `H100!`: an H100 that is never upgraded
    return None if price is None else round(price * (int(count) if count else 1), 2)


def gateway_per_day(containers: int, nonpreemptible: bool = False) -> float:
    """What `containers` always-warm, idle gateway containers cost a day."""
    hourly = GATEWAY_CORES * CPU_CORE_PER_HOUR + GATEWAY_MEMORY_GIB * MEMORY_GIB_PER_HOUR
    return containers * hourly * 24 * (NONPREEMPTIBLE_MULTIPLIER if nonpreemptible else 1)


def warm_hours_per_week(schedule: str) -> float:
    """Hours a week inside OLLAMA_WARM_SCHEDULE's windows (a week without a daylight
    saving change, sampled every 5 minutes, as the cron that applies it runs)."""
    parsed = parse_schedule(schedule)
    start = datetime(2026, 1, 5, tzinfo=parsed.zone)  # a Monday
    step = timedelta(minutes=5)
    warm = sum(parsed.is_warm(start + i * step) for i in range(7 * 24 * 12))
    return warm * 5 / 60
