"""backend.summary: what `modal deploy` prints before Modal builds anything."""

from __future__ import annotations

from backend.summary import deploy_summary
from config import load_settings


def test_the_summary_names_pools_gpus_prices_key_names_schedule_and_idle_cost():
    settings = load_settings({
        "GATEWAY_API_KEYS": "me:sk-1,partner:sk-2", "OLLAMA_GPU": "L4", "OLLAMA_SCALEDOWN": "120",
        "OLLAMA_MODEL_LIST": "llama3.2,qwen3:8b,glm-4.7-flash:q8_0@A100-80GB",
        "OLLAMA_WARM_SCHEDULE": "Mon-Fri 08:30-18:00 Europe/Berlin",
    })  # fmt: skip
    assert deploy_summary(settings).splitlines() == [
        "personal-model-garden: this deploy runs",
        "  pool default: L4 ($0.80 per GPU hour): llama3.2, qwen3:8b",
        "  pool a100-80gb: A100-80GB ($2.50 per GPU hour): glm-4.7-flash:q8_0",
        "  keys: me, partner",
        "  warm: Mon-Fri 08:30-18:00 Europe/Berlin (47.5 h a week with one container of each pool up)",
        "  GPUs scale to zero after 120 s idle (OLLAMA_SCALEDOWN), at most 1 container(s) per pool",
        # 47.5 h a week of an L4 and an A100-80GB: (0.80 + 2.50) * 47.5 / 7 = $22.39 a day.
        "  idle cost: $22.56 a day (1 always-warm gateway container(s): $0.17; warm windows: $22.39 a day on average)",
        "  (Modal list prices of 2026-05, https://modal.com/pricing; GPU time while a model works comes on top)",
    ]


def test_keys_from_a_secret_proxy_auth_and_an_open_garden_are_said_so():
    secret = deploy_summary(load_settings({"GATEWAY_API_KEYS_SECRET": "garden-keys"}))
    assert "  keys: from the Modal Secret 'garden-keys' (names are read in the container)" in secret.splitlines()
    proxy = deploy_summary(load_settings({"GATEWAY_PROXY_AUTH": "true"})).splitlines()
    assert "  Modal proxy auth: on (every request needs Modal-Key/Modal-Secret headers)" in proxy
    assert not any(line.startswith("  keys:") for line in proxy)
    opened = deploy_summary(load_settings({"GATEWAY_ALLOW_OPEN": "1"})).splitlines()
    assert "  keys: none: the gateway is open to anyone (GATEWAY_ALLOW_OPEN)" in opened
    assert "  warm: never (no OLLAMA_WARM_SCHEDULE): GPUs start on the first request" in opened
    assert "  idle cost: $0.17 a day (1 always-warm gateway container(s): $0.17)" in opened


def test_a_nonpreemptible_gateway_costs_three_times_as_much_idle():
    summary = deploy_summary(load_settings({"GATEWAY_ALLOW_OPEN": "1", "GATEWAY_NONPREEMPTIBLE": "true"}))
    assert "  idle cost: $0.49 a day (1 always-warm non-preemptible gateway container(s): $0.49)" in summary.splitlines()


def test_a_gpu_without_a_price_says_so():
    summary = deploy_summary(load_settings({"OLLAMA_GPU": "ANY", "GATEWAY_ALLOW_OPEN": "1"}))
    assert "  pool default: ANY (price not in the table): glm-4.7-flash:q8_0, glm-4.7-flash:q4_K_M" in summary.splitlines()
