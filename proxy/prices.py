"""What a GPU hour costs, for the gateway's estimates: the dated table in
`backend.prices` (the deploy summary's), overridable per GPU type with GATEWAY_GPU_PRICES
(JSON: GPU type -> dollars per hour). Estimates only: Modal's bill is the truth.
"""

from __future__ import annotations

from backend.prices import PRICES_DATE as PRICES_AS_OF
from backend.prices import PRICES_SOURCE, gpu_per_hour

__all__ = ["PRICES_AS_OF", "PRICES_SOURCE", "price_per_hour"]


def price_per_hour(gpu: str, overrides: dict[str, float] | None = None) -> float:
    """Dollars per hour of one container of `gpu` (`A100-80GB`, `H100:2`): an override or
    the table's price, times the number of GPUs; 0 when no price is known (`ANY`)."""
    kind, _, count = gpu.partition(":")
    given = {name.upper(): price for name, price in (overrides or {}).items()}.get(kind.upper())
    if given is None:
        return gpu_per_hour(gpu) or 0.0
    return given * (int(count) if count.isdigit() else 1)
