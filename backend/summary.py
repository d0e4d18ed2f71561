"""What `modal deploy` is about to run and what it costs idle, printed on the deployer's
side before Modal builds anything."""

from __future__ import annotations

from backend.prices import PRICES_DATE, PRICES_SOURCE, gateway_per_day, gpu_per_hour, warm_hours_per_week
from config import Settings, api_keys


def _money(dollars: float) -> str:
    return f"${dollars:,.2f}"


def deploy_summary(settings: Settings) -> str:
    """The pools (GPU, models, price an hour), who may call (key names, never keys),
    the warm schedule, the scale-down window and the idle cost a day."""
    lines = ["personal-model-garden: this deploy runs"]
    warm_hours = warm_hours_per_week(settings.ollama_warm_schedule) if settings.ollama_warm_schedule else 0.0
    warm_per_day = 0.0
    for pool in settings.ollama_pools:
        hourly = gpu_per_hour(pool.gpu)
        price = "price not in the table" if hourly is None else f"{_money(hourly)} per GPU hour"
        models = ", ".join(pool.models) or "no models (only what is pulled through the API)"
        lines.append(f"  pool {pool.name}: {pool.gpu} ({price}): {models}")
        if pool.models and hourly is not None:
            warm_per_day += hourly * warm_hours / 7
    if settings.gateway_api_keys:
        lines.append("  keys: " + ", ".join(key.name for key in api_keys(settings.gateway_api_keys)))
    elif settings.gateway_api_keys_secret:
        lines.append(f"  keys: from the Modal Secret {settings.gateway_api_keys_secret!r} (names are read in the container)")
    elif not settings.gateway_proxy_auth:
        lines.append("  keys: none: the gateway is open to anyone (GATEWAY_ALLOW_OPEN)")
    if settings.gateway_proxy_auth:
        lines.append("  Modal proxy auth: on (every request needs Modal-Key/Modal-Secret headers)")
    if settings.ollama_warm_schedule:
        lines.append(f"  warm: {settings.ollama_warm_schedule} ({warm_hours:g} h a week with one container of each pool up)")
    else:
        lines.append("  warm: never (no OLLAMA_WARM_SCHEDULE): GPUs start on the first request")
    scaledown, most = settings.ollama_scaledown, settings.ollama_max_containers
    lines.append(f"  GPUs scale to zero after {scaledown} s idle (OLLAMA_SCALEDOWN), at most {most} container(s) per pool")
    gateway, warm_gateways = gateway_per_day(settings.gateway_min_containers, settings.gateway_nonpreemptible), settings.gateway_min_containers
    kind = " non-preemptible" if settings.gateway_nonpreemptible else ""
    idle = f"  idle cost: {_money(gateway + warm_per_day)} a day ({warm_gateways} always-warm{kind} gateway container(s): {_money(gateway)}"
    idle += f"; warm windows: {_money(warm_per_day)} a day on average)" if warm_per_day else ")"
    lines.append(idle)
    lines.append(f"  (Modal list prices of {PRICES_DATE}, {PRICES_SOURCE}; GPU time while a model works comes on top)")
    return "\n".join(lines)
