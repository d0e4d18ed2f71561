"""What a GPU hour costs: a small, dated price table, for estimates only (Modal's bill is
the truth). Overridable with GATEWAY_GPU_PRICES (JSON: GPU type -> dollars per hour).
"""

from __future__ import annotations

# Modal's on-demand GPU prices in US dollars per GPU-hour, from https://modal.com/pricing
# (billed per second). As of 2026-12 (the team brief's figures for L4, A100-80GB and H100;
# the others as that page listed them). Region multipliers and credits are not modelled.
PRICES_AS_OF = "2026-12"
PRICES_SOURCE = "https://modal.com/pricing"
GPU_PRICES_PER_HOUR: dict[str, float] = {
    "T4": 0.59,
    "L4": 0.80,
    "A10": 1.10,
    "A10G": 1.10,
    "L40S": 1.95,
    "A100": 2.10,
    "A100-40GB": 2.10,
    "A100-80GB": 2.50,
    "H100": 3.95,
    "H100!": 3.95,
    "H200": 4.54,
    "B200": 6.25,
    "ANY": 3.95,  # Modal may place it on any GPU: estimated at the dearest common one
}


def price_per_hour(gpu: str, overrides: dict[str, float] | None = None) -> float:
    """Dollars per hour of one container of `gpu` (`A100-80GB`, `H100:2`): the table's
    price (or an override) times the number of GPUs."""
    kind, _, count = gpu.partition(":")
    kind = kind.upper()
    table = {**GPU_PRICES_PER_HOUR, **{k.upper(): v for k, v in (overrides or {}).items()}}
    return table.get(kind, 0.0) * (int(count) if count.isdigit() else 1)
