"""backend.prices: the dated price table the deploy summary uses."""

from __future__ import annotations

import pytest

from backend.prices import PRICES_DATE, PRICES_SOURCE, gateway_per_day, gpu_per_hour, warm_hours_per_week
from config import MODAL_GPU_TYPES


@pytest.mark.parametrize(("gpu", "price"), [("L4", 0.80), ("a100-80gb", 2.50), ("H100", 3.95), ("H100!", 3.95), ("H100:2", 7.90), ("T4", 0.59)])
def test_gpu_prices_per_hour(gpu, price):
    assert gpu_per_hour(gpu) == price


def test_every_gpu_config_accepts_has_a_price_but_any():
    assert [gpu for gpu in MODAL_GPU_TYPES if gpu_per_hour(gpu) is None] == ["ANY"]  # Modal picks the card
    assert PRICES_DATE.startswith("2026") and PRICES_SOURCE.startswith("https://modal.com/")


def test_the_always_warm_gateway_costs_cents_a_day():
    # 0.125 core at $0.047/h and 0.125 GiB at $0.008/h, 24 h: about 17 cents.
    assert gateway_per_day(1) == pytest.approx(0.165, abs=0.001)
    assert gateway_per_day(0) == 0 and gateway_per_day(2) == pytest.approx(2 * gateway_per_day(1))
    assert gateway_per_day(1, nonpreemptible=True) == pytest.approx(3 * gateway_per_day(1))  # Modal's 3x


@pytest.mark.parametrize(
    ("schedule", "hours"),
    [("Mon-Fri 08:30-18:00 Europe/Berlin", 47.5), ("Mon-Fri 08:00-19:00, Sat 10:00-14:00 UTC", 59.0), ("Sun 22:00-02:00", 4.0)],
)
def test_warm_hours_a_week(schedule, hours):
    assert warm_hours_per_week(schedule) == hours


def test_the_gateways_estimates_use_the_same_table_or_gateway_gpu_prices():
    from config import load_settings
    from proxy.prices import price_per_hour

    assert price_per_hour("A100-80GB") == 2.50 and price_per_hour("H100:2") == pytest.approx(7.90)
    assert price_per_hour("ANY") == 0.0  # no price known: counted as GPU time, estimated at nothing
    overrides = dict(load_settings({"GATEWAY_GPU_PRICES": '{"a100-80gb": 2.3, "ANY": 3.95}'}).gateway_gpu_prices)
    assert price_per_hour("A100-80GB:2", overrides) == pytest.approx(4.6) and price_per_hour("L4", overrides) == 0.80
    assert price_per_hour("ANY", overrides) == 3.95


@pytest.mark.parametrize("raw", ['{"A100": -1}', '{"TPU": 1}', "[2.5]", '{"L4": "cheap"}', "nope"])
def test_a_bad_price_override_fails_at_start_naming_the_variable(raw):
    from config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="GATEWAY_GPU_PRICES"):
        load_settings({"GATEWAY_GPU_PRICES": raw})
