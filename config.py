"""Every setting, read once from the environment and the project's settings file.

One frozen `Settings` object is built at import. A bad value fails right here, with a
message naming the variable and the accepted form, instead of deep inside Modal or at
the first request.

Settings may also live in `garden.env` next to this file (`.env` syntax, read with
python-dotenv), so a redeploy from a new shell deploys the same garden; the environment
wins over the file. Keys never live there: they go in a Modal Secret or the environment.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values

from backend.names import parse_name
from backend.warm import EXAMPLE as WARM_EXAMPLE
from backend.warm import ScheduleError, parse_schedule

APP_NAME = "personal-model-garden"

# Modal's limits, checked here so a typo fails at import with our own message.
MODAL_MAX_TIMEOUT = 86_400
MODAL_SCALEDOWN_RANGE = (2, 3600)
MODAL_GPU_TYPES = (
    "T4", "L4", "A10", "A10G", "L40S", "A100", "A100-40GB", "A100-80GB",
    "H100", "H100!", "H200", "B200", "ANY",
)  # fmt: skip

# Modal answers a web request whose response has not started within 150 s with a 303
# redirect (useless to a streaming client): the deployed gateway answers 504 first.
MODAL_WEB_FIRST_BYTE_LIMIT = 140

# Modal's web proxy serves at most this many concurrent requests per container; a higher
# @modal.concurrent(max_inputs=) would be silently ignored.
MODAL_WEB_MAX_INPUTS = 1000

# The gateway outlives the backend's own timeout by this much, so that a backend that
# times out is reported to the client instead of the gateway being cut first.
GATEWAY_TIMEOUT_MARGIN = 60


class ConfigError(ValueError):
    """A setting in the environment has a value we cannot use."""


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a whole number from {lo} to {hi}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={raw!r}: expected a whole number from {lo} to {hi}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r}: expected true or false")


def _list(env: Mapping[str, str], name: str, default: str) -> tuple[str, ...]:
    raw = env.get(name)
    if raw is None:
        raw = default
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _origins(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    origins = _list(env, name, "*") or ("*",)
    for origin in origins:
        if origin != "*" and not (origin.startswith(("http://", "https://")) and origin.count("/") == 2):
            raise ConfigError(f"{name}: {origin!r} is not an origin: expected * or scheme://host[:port], comma-separated")
    return origins


GPU_ACCEPTED = f"a Modal GPU type ({', '.join(MODAL_GPU_TYPES)}), optionally ':N' for N GPUs"


def _valid_gpu(raw: str) -> bool:
    kind, _, count = raw.partition(":")
    return kind.upper() in MODAL_GPU_TYPES and (not count or (count.isdigit() and int(count) >= 1))


def _gpu(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name, default).strip()
    if not raw:
        raise ConfigError(f"{name} is empty: expected {GPU_ACCEPTED}")
    if not _valid_gpu(raw):
        raise ConfigError(f"{name}={raw!r}: expected {GPU_ACCEPTED}")
    return raw


@dataclass(frozen=True)
class Pool:
    """The models that run on one kind of GPU: their own GPU containers on Modal (their
    own class, autoscaling and scale-down), sharing the models volume."""

    name: str  # "default" (OLLAMA_GPU), else the GPU in lower case: "l4", "a100-80gb", "h100x2"
    gpu: str
    models: tuple[str, ...]

    @property
    def class_name(self) -> str:
        """The Modal class that serves this pool (the default keeps the name it always had)."""
        return "OllamaBackend" if self.name == DEFAULT_POOL else "OllamaBackend_" + re.sub(r"[^A-Za-z0-9]", "_", self.gpu.upper())


DEFAULT_POOL = "default"


def _gpu_key(gpu: str) -> str:
    kind, _, count = gpu.partition(":")
    return kind.upper() + (f":{int(count)}" if count and int(count) > 1 else "")


def _pools(entries: tuple[str, ...], default_gpu: str) -> tuple[Pool, ...]:
    """`qwen3:8b@L4,llama3.2` -> the default pool (OLLAMA_GPU) and one pool per other GPU."""
    by_gpu: dict[str, list[str]] = {_gpu_key(default_gpu): []}
    gpu_of: dict[str, str] = {_gpu_key(default_gpu): default_gpu}
    pool_of_model: dict[str, str] = {}
    for entry in entries:
        model, at, gpu = entry.rpartition("@") if "@" in entry else (entry, "", "")
        model, gpu = model.strip(), gpu.strip()
        if at and not _valid_gpu(gpu):
            raise ConfigError(f"OLLAMA_MODEL_LIST: {entry!r} names the GPU {gpu!r}: expected model@GPU with {GPU_ACCEPTED}")
        parsed = parse_name(model)
        if parsed is None:
            raise ConfigError(f"OLLAMA_MODEL_LIST: {model!r} is not an Ollama model name (such as llama3.2 or qwen3:8b)")
        key = _gpu_key(gpu) if at else _gpu_key(default_gpu)
        gpu_of.setdefault(key, gpu)
        if pool_of_model.setdefault(parsed.key, key) != key:
            raise ConfigError(f"OLLAMA_MODEL_LIST: {model!r} is in two pools ({gpu_of[pool_of_model[parsed.key]]} and {gpu_of[key]}): give each model one GPU")
        if model not in by_gpu.setdefault(key, []):
            by_gpu[key].append(model)
    default_key = _gpu_key(default_gpu)
    return tuple(
        Pool(DEFAULT_POOL if key == default_key else key.lower().replace(":", "x"), gpu_of[key], tuple(models))
        for key, models in by_gpu.items()
    )


KEY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class ApiKey:
    """A key and the name it goes by in logs, metrics and errors (never the key)."""

    name: str
    key: str = field(repr=False)


KEYS_FORM = "name:key entries separated by commas, such as me:<key>,partner:<key>"


def api_keys(entries: tuple[str, ...]) -> tuple[ApiKey, ...]:
    """GATEWAY_API_KEYS entries: `name:key`, or a bare key named `key-<position>`.

    Strict, because a typo here locks everyone out or merges two keys into one: spaces
    around names and keys are trimmed; an empty entry, name or key, a space, `;` or `|` inside
    an entry (another separator than `,`), a `:` after something that is not a name, two
    keys with one name and one key under two names all fail, naming the entry by its
    position or name and never showing a key.
    """
    keys = []
    for position, raw in enumerate(entries, 1):
        entry = raw.strip()
        where = f"GATEWAY_API_KEYS: entry {position}"
        if not entry:
            raise ConfigError(f"{where} is empty (two commas in a row, or one at the end): expected {KEYS_FORM}")
        name, sep, key = (part.strip() for part in entry.partition(":"))
        if any(char.isspace() or char in ";|" for char in name + key):
            raise ConfigError(f"{where} holds a space, ';' or '|' inside it: separate keys with ',' only ({KEYS_FORM})")
        if sep and not KEY_NAME.fullmatch(name):
            what = "an empty name" if not name else "something that is not a name (letters, digits, _ . -, up to 64)"
            raise ConfigError(f"{where} has {what} before its ':': write name:key ({KEYS_FORM})")
        if sep and not key:
            raise ConfigError(f"{where} ({name!r}) has a name and no key after its ':': expected {KEYS_FORM}")
        keys.append(ApiKey(name, key) if sep else ApiKey(f"key-{position}", entry))
    names = [key.name for key in keys]
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise ConfigError(f"GATEWAY_API_KEYS: the name {duplicate!r} is given to two keys")
    owner: dict[str, str] = {}
    for key in keys:
        first = owner.setdefault(key.key, key.name)
        if first != key.name:
            raise ConfigError(f"GATEWAY_API_KEYS: {first!r} and {key.name!r} are the same key: give each name its own key")
    return tuple(keys)


def _key_entries(env: Mapping[str, str]) -> tuple[str, ...]:
    """GATEWAY_API_KEYS split on commas, each entry checked by `api_keys`."""
    raw = env.get("GATEWAY_API_KEYS", "")
    if not raw.strip():
        return ()
    entries = tuple(entry.strip() for entry in raw.split(","))
    api_keys(entries)
    return entries


@dataclass(frozen=True)
class KeyPolicy:
    """What one key may do: which models (None: all), how many requests at once, how
    many a minute, and how much GPU time a UTC day or month (None: no limit; see
    proxy.budgets)."""

    models: tuple[str, ...] | None = None
    max_streams: int | None = None
    requests_per_minute: int | None = None
    gpu_hours_per_day: float | None = None
    gpu_hours_per_month: float | None = None
    usd_per_day: float | None = None
    usd_per_month: float | None = None


POLICY_EXAMPLE = '{"partner": {"models": ["llama3.2"], "max_streams": 2, "requests_per_minute": 30, "usd_per_month": 20}, "*": {"max_streams": 4}}'
BUDGETS = ("gpu_hours_per_day", "gpu_hours_per_month", "usd_per_day", "usd_per_month")
POLICY_RULES = frozenset({"models", "max_streams", "requests_per_minute", *BUDGETS})


def _key_policies(env: Mapping[str, str], keys: tuple[ApiKey, ...]) -> tuple[tuple[str, KeyPolicy], ...]:
    """GATEWAY_KEY_POLICY: a JSON object from key names (or "*", every other key) to
    {"models": [...], "max_streams": N, "requests_per_minute": N}, each optional."""
    raw = env.get("GATEWAY_KEY_POLICY", "").strip()
    if not raw:
        return ()
    name = "GATEWAY_KEY_POLICY"
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} is not JSON ({exc}): expected such as {POLICY_EXAMPLE}") from None
    if not isinstance(parsed, dict):
        raise ConfigError(f"{name}: expected a JSON object such as {POLICY_EXAMPLE}")
    known = {key.name for key in keys}
    policies = []
    for who, rules in parsed.items():
        if who != "*" and known and who not in known:
            raise ConfigError(f"{name}: {who!r} is not the name of a key in GATEWAY_API_KEYS ({', '.join(sorted(known))}) or *")
        if not isinstance(rules, dict) or not set(rules) <= POLICY_RULES:
            raise ConfigError(f"{name}: the rules for {who!r} must be an object with models, max_streams, requests_per_minute and/or {', '.join(BUDGETS)}")
        models = rules.get("models")
        if models is not None and not (isinstance(models, list) and all(isinstance(m, str) and m.strip() for m in models)):
            raise ConfigError(f"{name}: models for {who!r} must be a list of model names")
        invalid = next((m for m in models or () if parse_name(m.strip()) is None), None)
        if invalid is not None:
            raise ConfigError(f"{name}: {invalid!r} (for {who!r}) is not an Ollama model name (such as llama3.2 or qwen3:8b)")
        for limit in ("max_streams", "requests_per_minute"):
            value = rules.get(limit)
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ConfigError(f"{name}: {limit} for {who!r} must be a whole number of at least 1")
        for budget in BUDGETS:
            value = rules.get(budget)
            if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
                raise ConfigError(f"{name}: {budget} for {who!r} must be a number above 0")
        budgets = {budget: float(rules[budget]) for budget in BUDGETS if rules.get(budget) is not None}
        policy = KeyPolicy(None if models is None else tuple(m.strip() for m in models), rules.get("max_streams"), rules.get("requests_per_minute"), **budgets)
        policies.append((who, policy))
    return tuple(policies)


def _gpu_prices(env: Mapping[str, str]) -> tuple[tuple[str, float], ...]:
    """GATEWAY_GPU_PRICES: a JSON object from Modal GPU types to dollars per GPU-hour."""
    raw = env.get("GATEWAY_GPU_PRICES", "").strip()
    if not raw:
        return ()
    example = '{"A100-40GB": 2.10, "L4": 0.80}'
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ConfigError(f"GATEWAY_GPU_PRICES is not a JSON object: expected such as {example}")
    for gpu, price in parsed.items():
        if gpu.upper() not in MODAL_GPU_TYPES or isinstance(price, bool) or not isinstance(price, (int, float)) or price < 0:
            raise ConfigError(f"GATEWAY_GPU_PRICES: {gpu!r}: {price!r}: expected a Modal GPU type and dollars per hour, such as {example}")
    return tuple((gpu.upper(), float(price)) for gpu, price in parsed.items())


def _ollama_url(raw: str) -> str:
    """Ollama's own OLLAMA_HOST forms: `host`, `host:port`, `:port` or a full URL."""
    raw = raw.strip() or "127.0.0.1:11434"
    scheme = "http"
    if "://" in raw:
        scheme, raw = raw.split("://", 1)
    raw = raw.rstrip("/")
    host, sep, port = raw.rpartition(":")
    if not sep or "]" in port:  # no port given (an IPv6 literal's colons are not a port)
        host, port = raw, "443" if scheme == "https" else "11434"
    host = host or "127.0.0.1"
    if host == "0.0.0.0":  # a bind address; clients reach it on loopback
        host = "127.0.0.1"
    if not port.isdigit():
        raise ConfigError(f"OLLAMA_HOST={raw!r}: expected host:port or a URL such as http://127.0.0.1:11434")
    return f"{scheme}://{host}:{port}"


@dataclass(frozen=True)
class Settings:
    # Backend (GPU) side.
    ollama_gpu: str = "A100-40GB"
    ollama_version: str = "0.30.3"
    ollama_scaledown: int = 300
    ollama_timeout: int = 1800
    ollama_max_inputs: int = 8
    ollama_max_containers: int = 1
    ollama_startup_timeout: int = 3600
    ollama_model_list: tuple[str, ...] = ("glm-4.7-flash:q8_0", "glm-4.7-flash:q4_K_M")  # names, without @GPU
    # From OLLAMA_MODEL_LIST's model@GPU entries; the default pool (OLLAMA_GPU) first.
    ollama_pools: tuple[Pool, ...] = field(default_factory=lambda: (Pool(DEFAULT_POOL, "A100-40GB", ("glm-4.7-flash:q8_0", "glm-4.7-flash:q4_K_M")),))
    ollama_warm_schedule: str = ""  # hours with one GPU container kept up (backend/warm.py)
    ollama_url: str = "http://127.0.0.1:11434"
    models_volume: str = "ollama-models"
    # Gateway (CPU) side.
    gateway_port: int = 8000
    gateway_min_containers: int = 1
    gateway_max_inputs: int = 1000
    gateway_startup_timeout: int = 30
    gateway_max_body_mb: int = 100
    gateway_body_timeout_s: int = 60  # longest time to receive a whole request body
    gateway_early_head_s: int = 5  # a stream with no backend head by then gets the gateway's
    gateway_api_keys: tuple[str, ...] = field(default=(), repr=False)  # secret: never printed; `name:key` or a bare key
    gateway_key_policy: tuple[tuple[str, KeyPolicy], ...] = ()  # key name (or "*") -> models and limits
    gateway_api_keys_secret: str = ""  # name of a Modal Secret holding GATEWAY_API_KEYS
    gateway_proxy_auth: bool = False
    gateway_cors_origins: tuple[str, ...] = ("*",)
    gateway_read_only: bool = False
    gateway_allow_open: bool = False  # the owner's explicit yes to a gateway without keys
    gateway_nonpreemptible: bool = False  # Modal's nonpreemptible for the gateway: 3x its CPU and memory price
    gateway_gpu_prices: tuple[tuple[str, float], ...] = ()  # GPU type -> $/hour, over proxy.prices
    gateway_usage_file: str = ""  # local mode: where usage is kept (default: memory)

    @property
    def protected(self) -> bool:
        """Does anything stand between the internet and the GPUs: keys, a key secret or
        Modal's proxy auth?"""
        return bool(self.gateway_api_keys or self.gateway_api_keys_secret or self.gateway_proxy_auth)

    def pool_models(self, name: str) -> tuple[str, ...]:
        """The models pool `name` pulls and preloads (only its own)."""
        return next(pool.models for pool in self.ollama_pools if pool.name == name)

    @property
    def gateway_timeout(self) -> int:
        return min(self.ollama_timeout + GATEWAY_TIMEOUT_MARGIN, MODAL_MAX_TIMEOUT)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build `Settings` from `env` (default: the process environment)."""
    env = os.environ if env is None else env
    defaults = Settings()
    version = env.get("OLLAMA_VERSION", defaults.ollama_version).strip().lstrip("v")
    if not version or not all(part.isdigit() for part in version.split(".")):
        raise ConfigError(f"OLLAMA_VERSION={version!r}: expected a release number such as 0.30.3")
    entries = _list(env, "OLLAMA_MODEL_LIST", ",".join(defaults.ollama_model_list))
    gpu = _gpu(env, "OLLAMA_GPU", defaults.ollama_gpu)
    pools = _pools(entries, gpu)
    models = tuple(model for pool in pools for model in pool.models)
    keys = _key_entries(env)
    warm = env.get("OLLAMA_WARM_SCHEDULE", "").strip()
    if warm:
        try:
            parse_schedule(warm)
        except ScheduleError as exc:
            raise ConfigError(f"OLLAMA_WARM_SCHEDULE={warm!r}: {exc}; expected windows such as {WARM_EXAMPLE!r}") from None
    return Settings(
        ollama_gpu=gpu,
        ollama_version=version,
        ollama_scaledown=_int(env, "OLLAMA_SCALEDOWN", defaults.ollama_scaledown, *MODAL_SCALEDOWN_RANGE),
        ollama_timeout=_int(env, "OLLAMA_TIMEOUT", defaults.ollama_timeout, 10, MODAL_MAX_TIMEOUT),
        ollama_max_inputs=_int(env, "OLLAMA_MAX_INPUTS", defaults.ollama_max_inputs, 1, 1000),
        ollama_max_containers=_int(env, "OLLAMA_MAX_CONTAINERS", defaults.ollama_max_containers, 1, 100),
        ollama_startup_timeout=_int(env, "OLLAMA_STARTUP_TIMEOUT", defaults.ollama_startup_timeout, 60, MODAL_MAX_TIMEOUT),
        ollama_model_list=models,
        ollama_pools=pools,
        ollama_warm_schedule=warm,
        ollama_url=_ollama_url(env.get("OLLAMA_HOST", "")),
        gateway_port=_int(env, "GATEWAY_PORT", defaults.gateway_port, 1, 65535),
        gateway_min_containers=_int(env, "GATEWAY_MIN_CONTAINERS", defaults.gateway_min_containers, 0, 100),
        gateway_max_inputs=_int(env, "GATEWAY_MAX_INPUTS", defaults.gateway_max_inputs, 1, MODAL_WEB_MAX_INPUTS),
        gateway_startup_timeout=_int(env, "GATEWAY_STARTUP_TIMEOUT", defaults.gateway_startup_timeout, 1, 600),
        gateway_max_body_mb=_int(env, "GATEWAY_MAX_BODY_MB", defaults.gateway_max_body_mb, 1, 10_000),
        gateway_body_timeout_s=_int(env, "GATEWAY_BODY_TIMEOUT_S", defaults.gateway_body_timeout_s, 1, 3600),
        # Far below Modal's 150 s limit on a response's start, which the early head is for.
        gateway_early_head_s=_int(env, "GATEWAY_EARLY_HEAD_S", defaults.gateway_early_head_s, 1, 60),
        gateway_api_keys=keys,
        gateway_key_policy=_key_policies(env, api_keys(keys)),
        gateway_api_keys_secret=env.get("GATEWAY_API_KEYS_SECRET", "").strip(),
        gateway_proxy_auth=_bool(env, "GATEWAY_PROXY_AUTH", defaults.gateway_proxy_auth),
        gateway_cors_origins=_origins(env, "GATEWAY_CORS_ORIGINS"),
        gateway_read_only=_bool(env, "GATEWAY_READ_ONLY", defaults.gateway_read_only),
        gateway_allow_open=_bool(env, "GATEWAY_ALLOW_OPEN", defaults.gateway_allow_open),
        gateway_nonpreemptible=_bool(env, "GATEWAY_NONPREEMPTIBLE", defaults.gateway_nonpreemptible),
        gateway_gpu_prices=_gpu_prices(env),
        gateway_usage_file=env.get("GATEWAY_USAGE_FILE", "").strip(),
    )


# Settings baked into the Modal images, so containers read what the deployer chose.
# Not OLLAMA_HOST (the backend always uses its own loopback Ollama) and never a secret.
FORWARDED_ENV = (
    "OLLAMA_GPU", "OLLAMA_VERSION", "OLLAMA_SCALEDOWN", "OLLAMA_TIMEOUT", "OLLAMA_MAX_INPUTS",
    "OLLAMA_MAX_CONTAINERS", "OLLAMA_STARTUP_TIMEOUT", "OLLAMA_WARM_SCHEDULE",
    "OLLAMA_MODEL_LIST", "GATEWAY_PORT", "GATEWAY_MIN_CONTAINERS", "GATEWAY_MAX_INPUTS",
    "GATEWAY_STARTUP_TIMEOUT", "GATEWAY_MAX_BODY_MB", "GATEWAY_BODY_TIMEOUT_S", "GATEWAY_EARLY_HEAD_S", "GATEWAY_API_KEYS_SECRET", "GATEWAY_PROXY_AUTH",
    "GATEWAY_CORS_ORIGINS", "GATEWAY_READ_ONLY", "GATEWAY_NONPREEMPTIBLE", "GATEWAY_GPU_PRICES",
)  # fmt: skip


def forwarded_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The settings set in `env` that containers must see too."""
    env = ENVIRONMENT if env is None else env
    return {name: env[name] for name in FORWARDED_ENV if name in env}


# --- Safe by default ------------------------------------------------------------------
OPEN_DEPLOY_REFUSED = (
    "refusing to deploy an open gateway (anyone could run your GPUs): set GATEWAY_API_KEYS_SECRET "
    "to a Modal Secret holding GATEWAY_API_KEYS, or set GATEWAY_API_KEYS, or GATEWAY_PROXY_AUTH=true; "
    "GATEWAY_ALLOW_OPEN=1 deploys it open on purpose"
)
OPEN_NETWORK_REFUSED = (
    "refusing to serve --host {host} without a key (anyone on the network could use your Ollama): "
    "set GATEWAY_API_KEYS, or keep the default --host 127.0.0.1; GATEWAY_ALLOW_OPEN=1 serves it open on purpose"
)


def deploy_refusal(settings: Settings) -> str | None:
    """Why `modal deploy` must not go ahead (one line), or None."""
    return None if settings.protected or settings.gateway_allow_open else OPEN_DEPLOY_REFUSED


def network_refusal(settings: Settings, host: str, loopback: bool) -> str | None:
    """Why local mode must not listen on `host` (one line), or None: a loopback address
    stays open, as Ollama's own does; any other needs a key or the owner's yes."""
    if loopback or settings.gateway_api_keys or settings.gateway_allow_open:
        return None
    return OPEN_NETWORK_REFUSED.format(host=host)


# --- The settings file ----------------------------------------------------------------
SETTINGS_FILE = Path(__file__).resolve().parent / "garden.env"
SETTINGS_FILE_VARIABLE = "GARDEN_SETTINGS_FILE"  # another file instead (tests, several gardens)
# What the file may set: every setting but the keys, which live in a Modal Secret or the
# environment so that no file in the project folder holds them.
FILE_SETTINGS = (*FORWARDED_ENV, "OLLAMA_HOST", "GATEWAY_KEY_POLICY", "GATEWAY_ALLOW_OPEN", "GATEWAY_USAGE_FILE")


def read_settings_file(path: Path) -> dict[str, str]:
    """The settings in `path` (`.env` syntax)."""
    values = dotenv_values(path, interpolate=False)
    for name, value in values.items():
        if name == "GATEWAY_API_KEYS":
            raise ConfigError(f"{path.name}: GATEWAY_API_KEYS does not belong in a file: put keys in a Modal Secret (GATEWAY_API_KEYS_SECRET) or the environment")
        if name not in FILE_SETTINGS:
            raise ConfigError(f"{path.name}: {name} is not a setting of this garden (see the Configuration table in README.md)")
        if value is None:
            raise ConfigError(f"{path.name}: {name} has no '=': expected NAME=value lines")
    return {name: value for name, value in values.items() if value is not None}


def environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The settings file's values under `env` (default: the process environment): the
    environment wins, so `OLLAMA_GPU=H100 modal deploy app.py` overrides the file once."""
    env = os.environ if env is None else env
    chosen = env.get(SETTINGS_FILE_VARIABLE, "").strip()
    if chosen and not Path(chosen).exists():
        raise ConfigError(f"{SETTINGS_FILE_VARIABLE}={chosen!r}: no such file")
    path = Path(chosen) if chosen else SETTINGS_FILE
    return {**(read_settings_file(path) if path.exists() else {}), **env}


ENVIRONMENT = environment()  # the process environment over the settings file, read once
settings = load_settings(ENVIRONMENT)
