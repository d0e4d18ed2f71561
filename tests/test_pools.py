"""The right GPU for each model: requests go to their model's pool (proxy.pools), through
the Modal-like seam with two pools that count their calls, each with its own Ollama."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import aiohttp
import pytest

from backend.cancel import LocalStopSignals
from backend.catalog import DictCatalog
from backend.service import OllamaService
from config import Pool
from proxy.catalog import CatalogBackend, containers_up
from proxy.pools import PoolRoute, PoolRouter, model_named
from proxy.transport import RemoteBackend
from tests.conftest import StoredBackend, serve, wait_for
from tests.fake_modal import FakeBackendMethod, FakeModalDict
from tests.fake_ollama import AlreadyRunning
from tests.ollama_standin import VERSION, StandinState, create_standin


@dataclass
class PoolUnderTest:
    state: StandinState
    service: OllamaService
    method: FakeBackendMethod
    stops: LocalStopSignals


@pytest.fixture
async def two_pools(start_gateway):
    """A default pool (llama3.2) and an A100-80GB pool (glm-4.7-flash:q8_0), each its own
    Ollama (stand-in) behind its own Modal-like class; one gateway routes between them."""
    started, pools, routes = [], {}, []
    store = FakeModalDict()
    for name, models in (("default", ["llama3.2:latest"]), ("a100-80gb", ["glm-4.7-flash:q8_0"])):
        state = StandinState(models=list(models))
        served = await serve(create_standin(state), handler_cancellation=True)
        started.append(served)
        service = OllamaService(served.url, tuple(models), commit=lambda: None, server=AlreadyRunning(), catalog=DictCatalog(store, VERSION, name))
        stops = LocalStopSignals()
        method = FakeBackendMethod(lambda request, service=service, stops=stops: service.proxy(request, stops=stops), on_ready=service.mark_ready)
        pools[name] = PoolUnderTest(state, service, method, stops)
        remote = CatalogBackend(RemoteBackend(method.remote_gen.aio, stops), DictCatalog(store, VERSION, name))
        routes.append(PoolRoute(name, remote, tuple(models), containers_up(method)))
    configured = (Pool("default", "A100-40GB", ("llama3.2",)), Pool("a100-80gb", "A100-80GB", ("glm-4.7-flash:q8_0",)))
    gateway = await start_gateway(PoolRouter(routes), backend_kind="modal", ollama_pools=configured)
    yield gateway, pools
    for pool in pools.values():
        await pool.service.settle()
        await pool.service.relay.aclose()
    for served in started:
        await served.runner.cleanup()


def calls(pools: dict[str, PoolUnderTest]) -> dict[str, list[str]]:
    return {name: [c["path"] for c in pool.method.calls] for name, pool in pools.items()}


@pytest.mark.parametrize(
    ("method", "path", "body", "pool"),
    [
        ("POST", "/api/chat", {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}, "default"),
        ("POST", "/api/chat", {"model": "glm-4.7-flash:q8_0", "messages": [{"role": "user", "content": "hi"}]}, "a100-80gb"),
        ("POST", "/api/generate", {"model": "registry.ollama.ai/library/glm-4.7-flash:q8_0", "prompt": "hi"}, "a100-80gb"),
        ("POST", "/api/embed", {"model": "GLM-4.7-Flash:Q8_0", "input": "x"}, "a100-80gb"),  # Ollama ignores case
        ("POST", "/api/show", {"model": "glm-4.7-flash:q8_0", "verbose": True}, "a100-80gb"),
        ("POST", "/v1/chat/completions", {"model": "library/glm-4.7-flash:q8_0", "messages": [{"role": "user", "content": "hi"}]}, "a100-80gb"),
        ("POST", "/v1/messages", {"model": "glm-4.7-flash:q8_0", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], "stream": True}, "a100-80gb"),
        ("POST", "/v1/responses", {"model": "glm-4.7-flash:q8_0", "input": "hi", "stream": True}, "a100-80gb"),
        ("POST", "/api/pull", {"model": "glm-4.7-flash:q8_0"}, "a100-80gb"),
        ("POST", "/api/pull", {"name": "glm-4.7-flash:q8_0"}, "a100-80gb"),  # Ollama's older field
        ("DELETE", "/api/delete", {"model": "glm-4.7-flash:q8_0"}, "a100-80gb"),
        ("POST", "/api/copy", {"source": "glm-4.7-flash:q8_0", "destination": "mine"}, "a100-80gb"),
        ("POST", "/api/create", {"model": "glm-4.7-flash:q8_0", "from": "x"}, "a100-80gb"),
        ("POST", "/api/chat", {"Model": "glm-4.7-flash:q8_0", "messages": [{"role": "user", "content": "hi"}]}, "a100-80gb"),  # as Go reads it
        ("POST", "/api/chat", {"model": "mistral", "messages": [{"role": "user", "content": "hi"}]}, "default"),  # in no pool
        ("POST", "/api/pull", {"model": "qwen3:0.6b"}, "default"),
    ],
)
async def test_each_request_reaches_only_its_models_pool(two_pools, method, path, body, pool):
    gateway, pools = two_pools
    async with aiohttp.ClientSession() as http, http.request(method, gateway + "/ollama" + path, json=body) as response:
        await response.read()
    other = next(name for name in pools if name != pool)
    assert calls(pools)[pool] == [path] and calls(pools)[other] == []  # the other pool's GPU never starts
    assert pools[other].method.containers == 0


async def test_an_unknown_model_gets_the_default_pools_own_404(two_pools):
    gateway, pools = two_pools
    async with aiohttp.ClientSession() as http, http.post(gateway + "/ollama/api/chat", json={"model": "ghost", "stream": False}) as response:
        assert response.status == 404 and await response.json() == {"error": "model 'ghost' not found"}
    assert calls(pools) == {"default": ["/api/chat"], "a100-80gb": []}


async def test_ps_merges_the_pools_that_run_and_starts_none(two_pools, monkeypatch):
    monkeypatch.setattr(PoolRouter, "RUNNING_TTL", 0.0)
    gateway, pools = two_pools
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway + "/ollama/api/ps") as response:
            assert await response.read() == b'{"models":[]}'  # nothing runs: nothing started
        assert calls(pools) == {"default": [], "a100-80gb": []}
        chat = {"messages": [{"role": "user", "content": "hi"}], "stream": False}
        async with http.post(gateway + "/ollama/api/chat", json={**chat, "model": "glm-4.7-flash:q8_0"}) as response:
            await response.read()
        async with http.get(gateway + "/ollama/api/ps") as response:  # one pool up: its own answer
            assert [m["name"] for m in (await response.json())["models"]] == ["glm-4.7-flash:q8_0"]
        async with http.post(gateway + "/ollama/api/chat", json={**chat, "model": "llama3.2"}) as response:
            await response.read()
        async with http.get(gateway + "/ollama/api/ps") as response:  # both up: merged
            assert sorted(m["name"] for m in (await response.json())["models"]) == ["glm-4.7-flash:q8_0", "llama3.2:latest"]
    # The second /api/ps asks only the pool that worked since: the other's answer is kept.
    assert calls(pools) == {"default": ["/api/chat", "/api/ps"], "a100-80gb": ["/api/chat", "/api/ps"]}


async def test_polling_ps_alone_never_keeps_a_gpu_busy(two_pools, monkeypatch):
    # Found by review: each /api/ps was an input to the GPU container, which restarts its
    # scale-down window, so a client polling it kept an A100 up for ever.
    monkeypatch.setattr(PoolRouter, "RUNNING_TTL", 0.0)
    monkeypatch.setattr(PoolRouter, "PS_FRESH", 0.0)
    gateway, pools = two_pools
    chat = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway + "/ollama/api/chat", json=chat) as response:
            await response.read()
        for _ in range(20):
            async with http.get(gateway + "/ollama/api/ps") as response:
                assert [m["name"] for m in (await response.json())["models"]] == ["llama3.2:latest"]
        assert calls(pools)["default"] == ["/api/chat", "/api/ps"]  # asked once, then its answer kept
        async with http.post(gateway + "/ollama/api/chat", json=chat) as response:
            await response.read()
        async with http.get(gateway + "/ollama/api/ps") as response:
            await response.read()
    assert calls(pools)["default"] == ["/api/chat", "/api/ps", "/api/chat", "/api/ps"]  # new work: asked again


async def test_a_client_that_leaves_stops_only_its_own_pools_work(two_pools):
    gateway, pools = two_pools
    slow, other = pools["a100-80gb"], pools["default"]
    slow.state.token_delay = other.state.token_delay = 0.02
    chat = {"messages": [{"role": "user", "content": "a long story"}], "options": {"num_predict": 300}}
    async with aiohttp.ClientSession() as http:
        kept = await http.post(gateway + "/ollama/api/chat", json={**chat, "model": "llama3.2"})
        left = await http.post(gateway + "/ollama/api/chat", json={**chat, "model": "glm-4.7-flash:q8_0"})
        await left.content.readline()
        left.close()
        gone = time.monotonic()
        assert await wait_for(lambda: slow.state.streams_cancelled == 1, 1.0) and time.monotonic() - gone < 1.0
        assert len(slow.stops.sent) == 1 and other.stops.sent == []
        lines = (await kept.read()).splitlines()
        assert json.loads(lines[-1])["done"] is True and other.state.streams_cancelled == 0


async def test_the_pool_is_in_the_log_and_the_metrics(two_pools, caplog):
    import logging

    gateway, _ = two_pools
    caplog.set_level(logging.INFO, logger="proxy.access")
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway + "/ollama/api/embed", json={"model": "glm-4.7-flash:q8_0", "input": "x"}) as response:
            await response.read()
        async with http.get(gateway + "/metrics") as response:
            metrics = await response.text()
        async with http.get(gateway + "/health") as response:
            health = await response.json()
    line = json.loads(next(r.getMessage() for r in caplog.records if r.name == "proxy.access"))
    assert line["pool"] == "a100-80gb"
    assert 'garden_requests_total{family="api/embed",method="POST",pool="a100-80gb",served_by="backend",status="200"} 1.0' in metrics
    assert health["config"]["pools"] == [
        {"name": "default", "gpu": "A100-40GB", "models": ["llama3.2"]},
        {"name": "a100-80gb", "gpu": "A100-80GB", "models": ["glm-4.7-flash:q8_0"]},
    ]


def test_model_named_reads_the_model_a_request_is_about():
    def frame(method, path, body):
        return {"method": method, "path": path, "headers": [], "body": json.dumps(body).encode() if body is not None else b""}

    assert model_named(frame("POST", "/api/chat", {"model": "a"})) == "a"
    assert model_named(frame("POST", "/api/pull", {"name": "b"})) == "b"
    assert model_named(frame("POST", "/api/copy", {"source": "c", "destination": "d"})) == "c"
    assert model_named(frame("GET", "/v1/models/e:1", None)) == "e:1"
    assert model_named(frame("GET", "/api/tags", None)) is None
    assert model_named(frame("POST", "/api/chat", {"model": "f", "images": ["A" * 100_000]})) == "f"  # scanned, not parsed


async def test_ps_never_starts_a_pool_modal_cannot_tell_about():
    async def unknown() -> bool:
        raise ConnectionError("the control plane is unreachable")

    pools = [StoredBackend(b'{"models":[{"name":"a"}]}'), StoredBackend(b'{"models":[{"name":"b"}]}')]
    router = PoolRouter([PoolRoute("default", pools[0], ("a",), unknown), PoolRoute("l4", pools[1], ("b",), unknown)])
    answer = await router.open({"method": "GET", "path": "/api/ps", "headers": [], "body": b""})
    assert answer.body == b'{"models":[]}' and [pool.calls for pool in pools] == [0, 0]
