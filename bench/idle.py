"""One hour of idle chat tabs, replayed at accelerated time: how often do they wake the GPU?

The deployed shape runs in process (the tests' Modal-like seam: a gateway on the remote
transport, the backend service, the catalog Dict) in front of the Ollama stand-in. The
same hour of requests is replayed twice: through a gateway that forwards everything (as
before the catalog) and through one that answers metadata itself. Time is virtual: a
request at minute 42 is sent at once and counted as minute 42.

A backend call wakes the GPU when no container has been up within the scale-down window
before it (OLLAMA_SCALEDOWN, 300 s); the container then stays up until the window after
the last call has passed. The clients, from their defaults as the sleeping-garden issue
lists them (assumptions are marked):
- Enchanted: `GET /` every 5 s (its "reachable" check).
- Open WebUI: a page load (`/api/version`, `/api/tags`, `/api/ps`) every 10 minutes
  (assumed: a user coming back to the tab), each followed by the model refresh it does
  before a `/api/show` (`/api/tags`, `/api/ps`, `POST /api/show`).
- An OpenAI-SDK app: `GET /v1/models` once a minute (assumed).

Run: `python -m bench.idle` (prints a table; `python -m bench` puts it in RESULTS.md).
"""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp

HOUR = 3600
SCALEDOWN = 300


def idle_hour() -> list[tuple[float, str, str, dict | None]]:
    """(second, method, path, JSON body) for one idle hour, in time order."""
    events: list[tuple[float, str, str, dict | None]] = []
    events += [(t, "GET", "/", None) for t in range(0, HOUR, 5)]
    for t in range(0, HOUR, 600):
        events += [(t + 0.1, "GET", "/api/version", None), (t + 0.2, "GET", "/api/tags", None), (t + 0.3, "GET", "/api/ps", None)]
        events += [(t + 1.1, "GET", "/api/tags", None), (t + 1.2, "GET", "/api/ps", None), (t + 1.3, "POST", "/api/show", {"model": "llama3.2"})]
    events += [(t + 0.5, "GET", "/v1/models", None) for t in range(0, HOUR, 60)]
    return sorted(events, key=lambda e: e[0])


def gpu_time(call_times: list[float]) -> tuple[int, float]:
    """(wakes, seconds a GPU container was up) for backend calls at these times."""
    wakes, up, until = 0, 0.0, None
    for t in call_times:
        if until is None or t > until:
            wakes += 1
        else:
            up -= until - t  # the window restarts from this call
        up += SCALEDOWN
        until = t + SCALEDOWN
    return wakes, up


async def replay(with_catalog: bool) -> dict:
    from backend.cancel import LocalStopSignals
    from backend.catalog import DictCatalog
    from backend.service import OllamaService
    from config import Settings
    from proxy.app import create_app
    from proxy.catalog import CatalogBackend, containers_up
    from proxy.pools import PoolRoute, PoolRouter
    from proxy.transport import RemoteBackend
    from tests.conftest import serve, serve_gateway
    from tests.fake_modal import FakeBackendMethod, FakeModalDict
    from tests.fake_ollama import AlreadyRunning
    from tests.ollama_standin import VERSION, StandinState, create_standin

    state = StandinState()
    standin = await serve(create_standin(state))
    store = FakeModalDict()
    service = OllamaService(standin.url, ("llama3.2",), commit=lambda: None, server=AlreadyRunning(), catalog=DictCatalog(store, VERSION))
    await asyncio.to_thread(service.start)  # the deploy's first start wrote the catalog
    stops = LocalStopSignals()
    method = FakeBackendMethod(lambda request: service.proxy(request, stops=stops))
    method.scale_to_zero()
    remote = RemoteBackend(method.remote_gen.aio, stops)
    # Before: every request forwarded. After: metadata from the catalog, /api/ps from Modal's stats.
    pool = CatalogBackend(remote, DictCatalog(store, VERSION) if with_catalog else None)  # as app.py wires a pool
    backend = PoolRouter([PoolRoute("default", pool, ("llama3.2",), containers_up(method) if with_catalog else None)])
    gateway = await serve_gateway(create_app(backend, Settings(), backend_kind="modal"))
    call_times: list[float] = []
    events = idle_hour()
    try:
        async with aiohttp.ClientSession() as http:
            for t, verb, path, body in events:
                before = len(method.calls)
                async with http.request(verb, gateway.url + "/ollama" + path, json=body) as response:
                    await response.read()
                    assert response.status == 200, (verb, path, response.status)
                call_times += [t] * (len(method.calls) - before)
                if not call_times or t - call_times[-1] > SCALEDOWN:
                    method.scale_to_zero()  # Modal scaled the container down
    finally:
        await gateway.runner.cleanup()
        await service.relay.aclose()
        await standin.runner.cleanup()
    wakes, up = gpu_time(call_times)
    return {"requests": len(events), "backend_calls": len(call_times), "gpu_wakes": wakes, "gpu_seconds": up}


def measure() -> dict:
    return {"before": asyncio.run(replay(False)), "after": asyncio.run(replay(True))}


def render(result: dict) -> list[str]:
    b, a = result["before"], result["after"]
    return [
        "## An idle hour: what wakes the GPU",
        "",
        f"One hour of idle tabs ({b['requests']} requests: Enchanted's 5 s ping, an Open WebUI page load every 10 minutes, "
        "`/v1/models` once a minute; `bench/idle.py`), replayed at accelerated time through the Modal-shaped gateway. "
        f"A GPU container stays up {SCALEDOWN} s after its last call.",
        "",
        "| gateway | backend calls | GPU wakes | GPU container up |",
        "|---|---|---|---|",
        f"| forwards everything (before) | {b['backend_calls']} | {b['gpu_wakes']} | {b['gpu_seconds'] / 60:.0f} min |",
        f"| answers metadata itself (after) | {a['backend_calls']} | {a['gpu_wakes']} | {a['gpu_seconds'] / 60:.0f} min |",
    ]


if __name__ == "__main__":
    sys.path.insert(0, ".")
    result = measure()
    print(json.dumps(result))
    print("\n".join(render(result)))
