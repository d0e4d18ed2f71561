"""personal-model-garden on Modal: `modal deploy app.py`.

Wiring only, top to bottom: images, the models volume, the GPU backend class, the CPU
gateway. The logic lives in `backend/` (Ollama and the relay) and `proxy/` (the gateway).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import modal

try:  # a bad setting stops the deploy in one line naming it, not a traceback
    from config import (
        APP_NAME, DEFAULT_POOL, ENVIRONMENT, MODAL_WEB_FIRST_BYTE_LIMIT, Pool, deploy_refusal, forwarded_env, settings,
    )  # fmt: skip
except ValueError as exc:  # config.ConfigError
    sys.exit(f"configuration error: {exc}")
from backend.summary import deploy_summary

# --- Before anything is created: refuse an open gateway, say what this deploy runs -------
# `modal deploy` imports this file on the deployer's machine first (modal.is_local());
# each container imports it again, and skips this.
if modal.is_local():
    refusal = deploy_refusal(settings)
    if refusal:
        sys.exit(f"error: {refusal}")  # one line, not a traceback; exit status 1
    print(deploy_summary(settings), file=sys.stderr)

app = modal.App(APP_NAME)

# Settings are read again inside each container: carry the deployer's choices there.
settings_env = forwarded_env()

# Modal reads local files when it builds the image, relative to the folder `modal deploy`
# runs in: name them from this file's folder so a deploy works from anywhere.
HERE = Path(__file__).resolve().parent
REQUIREMENTS = str(HERE / "requirements.txt")

# --- Images -------------------------------------------------------------------------
# The gateway is small and cheap: aiohttp on a CPU, no Ollama.
gateway_image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install_from_requirements(REQUIREMENTS)
    .env(settings_env)
    .add_local_python_source("config", "proxy", "backend")
)

# The backend runs a pinned Ollama (install script; it needs curl, CA certs and zstd).
backend_image = (
    modal.Image.debian_slim(python_version="3.11")
    .apt_install("curl", "ca-certificates", "zstd")
    .run_commands(f"curl -fsSL https://ollama.com/install.sh | OLLAMA_VERSION={settings.ollama_version} sh")
    .pip_install_from_requirements(REQUIREMENTS)
    .env(settings_env)
    .add_local_python_source("config", "proxy", "backend")
)

# --- Model store ----------------------------------------------------------------------
MODELS_DIR = "/ollama-models"
models_volume = modal.Volume.from_name(settings.models_volume, create_if_missing=True)

# Stop signals from the gateway when a client leaves mid-stream (see backend/cancel.py).
stop_queue = modal.Queue.from_name(f"{APP_NAME}-stops", create_if_missing=True)

# What Ollama answered about the model store, written by the backend, read by the gateway,
# which answers tags, show, version and model lists from it without waking a GPU
# (see backend/catalog.py for why a Dict).
catalog_dict = modal.Dict.from_name(f"{APP_NAME}-catalog", create_if_missing=True)

# GPU time and tokens per key, written by every gateway container, read for budgets and
# the page; it outlives restarts and deploys (see proxy/ledger.py).
usage_dict = modal.Dict.from_name(f"{APP_NAME}-usage", create_if_missing=True)

# Inside the GPU container Ollama listens on loopback only; the relay is its one client.
BACKEND_OLLAMA_URL = "http://127.0.0.1:11434"


# --- Backend: Ollama on a GPU, scales to zero -------------------------------------------
class GardenBackend:
    """Ollama on a GPU for one pool's models (see `backend_class` below)."""

    pool_name = DEFAULT_POOL

    @modal.enter()
    def start(self) -> None:
        from backend.catalog import DictCatalog
        from backend.ollama_server import OllamaServer
        from backend.service import OllamaService

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        server = OllamaServer(
            BACKEND_OLLAMA_URL,
            env={
                "OLLAMA_MODELS": MODELS_DIR,  # Ollama's own name for its models directory
                "OLLAMA_NUM_PARALLEL": str(settings.ollama_max_inputs),  # matches Modal's concurrency
                "OLLAMA_KEEP_ALIVE": "-1",  # stay loaded; Modal's scaledown decides when to stop
            },
        )
        models = settings.pool_models(self.pool_name)  # only its own
        catalog = DictCatalog(catalog_dict, settings.ollama_version, self.pool_name)
        self.service = OllamaService(BACKEND_OLLAMA_URL, models, commit=models_volume.commit, server=server, catalog=catalog)
        self.service.start()

    @modal.method()
    async def proxy(self, request: dict) -> AsyncIterator[dict | bytes]:
        """Yield the response head, then body chunks as Ollama sends them."""
        from backend.cancel import QueueStopSignals

        async for frame in self.service.proxy(request, stops=QueueStopSignals(stop_queue)):
            yield frame

    @modal.exit()
    def stop(self) -> None:
        self.service.stop()


def backend_class(pool: Pool) -> modal.Cls:
    """The GPU class of one pool: its own containers, autoscaling and scale-down on Modal.

    One class per pool (not `with_options` variants or `modal.parameter()` pools of one
    class): each is deployed by `modal deploy` with its own GPU, shows in `.info()` and in
    Modal's dashboard, and is found again by name in its container (hence `globals()`).
    """
    cls = type(pool.class_name, (GardenBackend,), {"pool_name": pool.name, "__module__": __name__, "__qualname__": pool.class_name})
    cls = modal.concurrent(max_inputs=settings.ollama_max_inputs)(cls)
    return app.cls(
        image=backend_image,
        gpu=pool.gpu,
        volumes={MODELS_DIR: models_volume},  # every pool shares the one model store
        scaledown_window=settings.ollama_scaledown,
        timeout=settings.ollama_timeout,
        startup_timeout=settings.ollama_startup_timeout,  # the first start pulls the models
        max_containers=settings.ollama_max_containers,  # a ceiling on GPUs (and on concurrent pulls)
        # No retries: a retried generator restarts and would splice two generations (Modal's
        # own re-runs after a preemption cannot be turned off: the gateway catches those).
    )(cls)


# One class per GPU pool of OLLAMA_MODEL_LIST (`model@GPU`); by default just OllamaBackend.
backend_classes = {pool.name: backend_class(pool) for pool in settings.ollama_pools}
globals().update({pool.class_name: backend_classes[pool.name] for pool in settings.ollama_pools})
OllamaBackend = backend_classes[DEFAULT_POOL]


# --- Warm windows: one GPU container kept up in the hours of OLLAMA_WARM_SCHEDULE -----------
if settings.ollama_warm_schedule:
    # On the clock's 5-minute marks, so a window at 08:30 gets its container at 08:25.
    @app.function(image=gateway_image, schedule=modal.Cron("*/5 * * * *"), timeout=120)
    def warm_windows() -> None:
        """Set the backend's min_containers from the schedule (Modal's autoscaler does the rest)."""
        from datetime import datetime, timedelta, timezone

        from backend.warm import apply_schedule

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        for pool in settings.ollama_pools:  # every pool with models is warm in the windows
            if pool.models:
                apply_schedule(settings.ollama_warm_schedule, backend_classes[pool.name](), datetime.now(timezone.utc), lead=timedelta(minutes=5))


# --- Gateway: always warm, CPU only -----------------------------------------------------
# API keys (GATEWAY_API_KEYS, and GATEWAY_KEY_POLICY with them) reach the gateway from a named Secret, or from the
# deployer's environment (then Modal stores them as a Secret, never in the image).
# A policy (models, limits, budgets) travels the same way, with or without keys.
if settings.gateway_api_keys_secret:
    if modal.is_local() and ENVIRONMENT.get("GATEWAY_KEY_POLICY"):
        sys.exit("configuration error: GATEWAY_KEY_POLICY is set here but the keys come from GATEWAY_API_KEYS_SECRET: put the policy in that secret")
    gateway_secrets = [modal.Secret.from_name(settings.gateway_api_keys_secret)]
elif from_deployer := {name: ENVIRONMENT[name] for name in ("GATEWAY_API_KEYS", "GATEWAY_KEY_POLICY") if ENVIRONMENT.get(name)}:
    gateway_secrets = [modal.Secret.from_dict(from_deployer)]
else:
    gateway_secrets = []


@app.function(
    image=gateway_image,
    secrets=gateway_secrets,
    min_containers=settings.gateway_min_containers,
    timeout=settings.gateway_timeout,  # at least the backend's, so long streams are not cut
    # A preempted gateway cuts every open stream; not being preempted costs 3x its CPU and
    # memory price (off by default: see the README's "When Modal preempts a container").
    nonpreemptible=settings.gateway_nonpreemptible,
)
@modal.concurrent(max_inputs=settings.gateway_max_inputs)
@modal.web_server(
    port=settings.gateway_port,
    startup_timeout=settings.gateway_startup_timeout,
    requires_proxy_auth=settings.gateway_proxy_auth,  # Modal-Key/Modal-Secret on top of API keys
)
def gateway() -> None:
    from backend.cancel import QueueStopSignals
    from backend.catalog import DictCatalog
    from proxy.app import create_app
    from proxy.catalog import CatalogBackend, containers_up
    from proxy.garden import Garden, runners_of
    from proxy.ledger import DictUsageStore
    from proxy.pools import PoolRoute, PoolRouter
    from proxy.server import serve_in_thread
    from proxy.transport import RemoteBackend

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    stops = QueueStopSignals(stop_queue)
    methods = {pool.name: backend_classes[pool.name]().proxy for pool in settings.ollama_pools}
    # GPU time per pool from Modal's container counts (no input, nothing started), per key.
    garden = Garden(
        {pool.name: pool.gpu for pool in settings.ollama_pools},
        runners={name: runners_of(method) for name, method in methods.items()},
        store=DictUsageStore(usage_dict),
        prices=dict(settings.gateway_gpu_prices),
    )
    routes = []
    for pool in settings.ollama_pools:  # each model's requests to its pool's GPU class
        method = methods[pool.name]
        # Metadata from the pool's own catalog, without a GPU; the rest to its GPU class (metered).
        to_gpu = garden.metered(pool.name, RemoteBackend(method.remote_gen.aio, stops))
        remote = CatalogBackend(to_gpu, DictCatalog(catalog_dict, settings.ollama_version, pool.name))
        # /api/ps asks Modal which pools have a container up (no input, no container started).
        routes.append(PoolRoute(pool.name, remote, pool.models, containers_up(method)))
    backend = PoolRouter(routes, default=DEFAULT_POOL)
    catalog = None  # inside each pool
    # A thread of this process, not a subprocess, so the server can call OllamaBackend.
    # Modal cuts a response that has not started within 150 s: a request that does not
    # stream gets its 504 first (streams get an early head from the gateway instead).
    first_byte_timeout = min(settings.ollama_timeout, MODAL_WEB_FIRST_BYTE_LIMIT)
    serve_in_thread(
        lambda: create_app(backend, settings, backend_kind="modal", first_byte_timeout=first_byte_timeout, catalog=catalog, garden=garden),
        "0.0.0.0",
        settings.gateway_port,
    )
