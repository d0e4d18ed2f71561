"""A garden that sleeps: metadata is answered by the gateway from the catalog the backend
wrote, so chat UIs polling it never wake a GPU (proxy.catalog, backend.catalog)."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import ollama
import openai
import pytest
from yarl import URL

from backend.catalog import CATALOG_KEY, DictCatalog, build_catalog, refresh
from proxy.catalog import CatalogBackend, catalog_answer
from proxy.pools import PoolRouter
from tests.conftest import StoredBackend
from tests.fake_modal import FakeModalDict
from tests.ollama_standin import VERSION

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}


async def fetch(http: aiohttp.ClientSession, method: str, url: str, **kwargs) -> tuple[int, str, bytes]:
    async with http.request(method, url, **kwargs) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.read()


async def same_as_ollama(http, garden, method: str, path: str, **kwargs) -> bytes:
    """Ask the gateway and the stand-in (Ollama) the same; they must answer alike, byte for byte."""
    direct = await fetch(http, method, garden.standin_url + path, **kwargs)
    garden.state.seen.clear()
    through = await fetch(http, method, garden.url + "/ollama" + path, **kwargs)
    assert through == direct, (method, path)
    return through[2]


@pytest.fixture
def garden(modal_garden, standin):
    modal_garden.standin_url = standin[0]
    return modal_garden


# Open WebUI: every page load, and before every show/embed/generate (its model cache lives 1 s).
OPEN_WEBUI_PAGE_LOAD = [("GET", "/api/tags", None), ("GET", "/api/ps", None), ("GET", "/api/version", None)]
OPEN_WEBUI_BEFORE_SHOW = [("GET", "/api/tags", None), ("GET", "/api/ps", None), ("POST", "/api/show", {"model": "llama3.2"})]
ENCHANTED_PING = [("GET", "/", None), ("HEAD", "/", None)]
OPENAI_MODELS = [("GET", "/v1/models", None), ("GET", "/v1/models/llama3.2", None), ("GET", "/v1/models/llama3.2:latest", None)]


async def test_page_loads_pings_and_show_bursts_never_reach_the_backend(garden, http, monkeypatch):
    monkeypatch.setattr(PoolRouter, "RUNNING_TTL", 0.1)
    # Before the first backend start there is no catalog: forwarded as before.
    assert await same_as_ollama(http, garden, "GET", "/api/tags")
    assert len(garden.method.calls) == 1
    await garden.start_backend()
    garden.method.scale_to_zero()  # the scale-down window passed
    await asyncio.sleep(0.15)
    calls = len(garden.method.calls)

    for _ in range(3):
        for method, path, body in OPEN_WEBUI_PAGE_LOAD + OPEN_WEBUI_BEFORE_SHOW + ENCHANTED_PING + OPENAI_MODELS:
            if path == "/api/ps":
                async with http.get(garden.url + "/ollama/api/ps") as response:  # no container: nothing loaded
                    assert (response.status, await response.read()) == (200, b'{"models":[]}')
                    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
                continue
            await same_as_ollama(http, garden, method, path, json=body)
    burst = [fetch(http, "POST", garden.url + "/ollama/api/show", json={"model": "llama3.2"}) for _ in range(200)]  # Continue
    answers = await asyncio.gather(*burst)
    assert {a[0] for a in answers} == {200} and len({a[2] for a in answers}) == 1
    assert len(garden.method.calls) == calls  # not one backend call
    assert garden.state.seen == []  # and Ollama saw nothing

    async with http.post(garden.url + "/ollama/api/chat", json=CHAT) as response:
        assert response.status == 200 and (await response.read()).count(b"\n") == 9
    assert len(garden.method.calls) == calls + 1  # a chat does wake it: exactly one call


async def test_unknown_models_get_ollamas_own_404s(garden, http):
    await garden.start_backend()
    calls = len(garden.method.calls)
    body = await same_as_ollama(http, garden, "POST", "/api/show", json={"model": "ghost:7b"})
    assert body == b'{"error":"model \'ghost:7b\' not found"}'
    body = await same_as_ollama(http, garden, "GET", "/v1/models/ghost")
    assert json.loads(body)["error"]["type"] == "not_found_error"
    await same_as_ollama(http, garden, "POST", "/api/show", json={"name": "LLaMA3.2"})  # old field, other case
    await same_as_ollama(http, garden, "POST", "/api/show", json={"model": "library/llama3.2:latest"})
    await same_as_ollama(http, garden, "GET", "/v1/models/LLaMA3.2")  # the id is the name as asked
    assert len(garden.method.calls) == calls


@pytest.mark.parametrize(
    "body",
    [
        {"model": "llama3.2", "verbose": True},  # may be forwarded: tensors and all
        {"model": "llama3.2", "system": "You are a pirate."},  # changes the answer
        {"model": "gpt-oss:120b-cloud"},  # Ollama sends cloud models elsewhere
        {"model": "not a name!"},  # Ollama's to judge
        {},  # Ollama's 400
    ],
)
async def test_show_requests_the_catalog_cannot_answer_exactly_are_forwarded(garden, http, body):
    await garden.start_backend()
    calls = len(garden.method.calls)
    await same_as_ollama(http, garden, "POST", "/api/show", json=body)
    assert len(garden.method.calls) == calls + 1


async def test_pulls_and_deletes_change_the_answers_with_no_further_backend_call(garden, http):
    await garden.start_backend()
    async with http.post(garden.url + "/ollama/api/pull", json={"model": "qwen3:0.6b"}) as response:
        assert json.loads((await response.read()).splitlines()[-1]) == {"status": "success"}
    calls = len(garden.method.calls)
    tags = json.loads(await same_as_ollama(http, garden, "GET", "/api/tags"))
    assert "qwen3:0.6b" in [m["name"] for m in tags["models"]]
    models = json.loads(await same_as_ollama(http, garden, "GET", "/v1/models"))
    assert "qwen3:0.6b" in [m["id"] for m in models["data"]]
    await same_as_ollama(http, garden, "POST", "/api/show", json={"model": "qwen3:0.6b"})
    assert len(garden.method.calls) == calls

    async with http.delete(garden.url + "/ollama/api/delete", json={"model": "qwen3:0.6b"}) as response:
        assert response.status == 200
    calls = len(garden.method.calls)
    tags = json.loads(await same_as_ollama(http, garden, "GET", "/api/tags"))
    assert "qwen3:0.6b" not in [m["name"] for m in tags["models"]]
    assert (await fetch(http, "POST", garden.url + "/ollama/api/show", json={"model": "qwen3:0.6b"}))[0] == 404
    assert len(garden.method.calls) == calls


async def test_the_official_clients_list_and_show_from_the_catalog(garden, ollama_clients):
    await garden.start_backend()
    calls = len(garden.method.calls)
    client = ollama_clients(garden.url + "/ollama")
    listed = await client.list()
    assert [m.model for m in listed.models] == ["llama3.2:latest", "glm-4.7-flash:q8_0"]
    shown = await client.show("llama3.2")
    assert shown.details.family == "llama" and shown.modelfile == "FROM llama3.2:latest"
    with pytest.raises(ollama.ResponseError) as info:
        await client.show("ghost")
    assert info.value.status_code == 404 and info.value.error == "model 'ghost' not found"
    sdk = openai.AsyncOpenAI(base_url=garden.url + "/ollama/v1", api_key="unused")
    assert [m.id for m in (await sdk.models.list()).data] == ["llama3.2:latest", "glm-4.7-flash:q8_0"]
    assert (await sdk.models.retrieve("llama3.2")).owned_by == "library"
    with pytest.raises(openai.NotFoundError):
        await sdk.models.retrieve("ghost")
    await sdk.close()
    assert len(garden.method.calls) == calls


async def test_ps_asks_modal_once_per_second_or_two_not_per_request(garden, http):
    await garden.start_backend()
    for _ in range(5):
        assert (await fetch(http, "GET", garden.url + "/ollama/api/ps"))[2] == b'{"models":[]}'
    assert garden.method.stats_reads == 1 and garden.method.calls == []


async def test_ps_is_forwarded_while_a_container_runs(garden, http, monkeypatch):
    monkeypatch.setattr(PoolRouter, "RUNNING_TTL", 0.1)
    await garden.start_backend()
    garden.method.scale_to_zero()
    assert (await fetch(http, "GET", garden.url + "/ollama/api/ps"))[2] == b'{"models":[]}'
    calls = len(garden.method.calls)
    async with http.post(garden.url + "/ollama/api/chat", json=CHAT) as response:
        await response.read()
    await asyncio.sleep(0.15)
    ps = await same_as_ollama(http, garden, "GET", "/api/ps")
    assert json.loads(ps)["models"][0]["name"] == "llama3.2:latest"
    assert len(garden.method.calls) == calls + 2  # the chat, and /api/ps while its container runs


async def test_a_missing_or_unreadable_catalog_means_forward(garden, http, caplog):
    await garden.start_backend()
    garden.catalog.data[CATALOG_KEY] = b"not a pickle"  # unreadable
    calls = len(garden.method.calls)
    await same_as_ollama(http, garden, "GET", "/api/tags")
    assert len(garden.method.calls) == calls + 1 and "could not read the catalog" in caplog.text
    garden.catalog.put(CATALOG_KEY, {"format": 0})  # another format
    await asyncio.sleep(CatalogBackend.CATALOG_TTL)
    await same_as_ollama(http, garden, "GET", "/api/version")
    assert len(garden.method.calls) == calls + 2


async def test_keys_cors_metrics_and_the_access_log_treat_gateway_answers_alike(standin, start_gateway, http, caplog):
    from backend.relay import OllamaRelay
    from proxy.transport import InProcessBackend

    url, _ = standin
    store = FakeModalDict()
    DictCatalog(store, VERSION).write(await asyncio.to_thread(build_catalog, url))
    gateway = await start_gateway(InProcessBackend(OllamaRelay(url)), gateway_api_keys=("k1",), catalog=DictCatalog(store, VERSION))
    caplog.set_level(logging.INFO, logger="proxy.access")
    assert (await fetch(http, "GET", gateway + "/ollama/api/tags"))[0] == 401
    async with http.get(gateway + "/ollama/api/tags", headers={"Authorization": "Bearer k1", "Origin": "https://chat.example"}) as response:
        assert response.status == 200 and response.headers["Access-Control-Allow-Origin"] == "https://chat.example"
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "proxy.access"]
    assert [(line["status"], line["served_by"]) for line in lines] == [(401, "gateway"), (200, "gateway")]
    async with http.get(gateway + "/metrics", headers={"X-API-Key": "k1"}) as response:
        text = await response.text()
    assert 'garden_requests_total{family="api/tags",method="GET",pool="",served_by="gateway",status="200"} 1.0' in text
    async with http.get(gateway + "/health") as response:
        assert "GET /api/tags" in (await response.json())["answered_by_gateway"]


async def test_local_mode_forwards_everything_with_the_same_code(standin, gateway, http):
    _, state = standin
    for path in ("/api/tags", "/api/version", "/v1/models"):
        assert (await fetch(http, "GET", gateway + "/ollama" + path))[0] == 200
    assert [s.path for s in state.seen] == ["/api/tags", "/api/version", "/v1/models"]
    async with http.get(gateway + "/health") as response:
        assert (await response.json())["answered_by_gateway"] == []


# --- The catalog itself -------------------------------------------------------------


async def test_build_catalog_keeps_ollamas_bytes(standin):
    url, _ = standin
    catalog = await asyncio.to_thread(build_catalog, url)
    assert catalog["root"] == {"status": 200, "content_type": "text/plain; charset=utf-8", "body": b"Ollama is running"}
    assert catalog["version"]["body"] == b'{"version":"0.30.3-standin"}'
    assert set(catalog["models"]) == {"registry.ollama.ai/library/llama3.2:latest", "registry.ollama.ai/library/glm-4.7-flash:q8_0"}
    assert catalog["models"]["registry.ollama.ai/library/llama3.2:latest"]["created"] == 1761991200


async def test_catalog_answer_is_pure_and_forwards_what_it_does_not_know(standin):
    url, _ = standin
    catalog = await asyncio.to_thread(build_catalog, url)
    assert catalog_answer(catalog, "GET", "/api/tags", b"").body == catalog["tags"]["body"]
    assert catalog_answer(catalog, "HEAD", "/api/version", b"").status == 200
    for method, route in (("POST", "/api/chat"), ("GET", "/api/ps"), ("HEAD", "/v1/models"), ("DELETE", "/api/tags"), ("GET", "/v1/models/a/b")):
        assert catalog_answer(catalog, method, route, b"") is None
    assert catalog_answer(catalog, "POST", "/api/show", b'{"model": "llama3.2"}', "GitHubCopilotChat/0.1") is None  # Ollama echoes the name
    assert catalog_answer(catalog, "POST", "/api/show", b"[" * 100_000) is None


async def test_a_catalog_that_cannot_be_rebuilt_is_removed_never_left_stale(standin, caplog):
    url, state = standin
    store = FakeModalDict()
    catalog = DictCatalog(store, VERSION)
    assert await asyncio.to_thread(refresh, url, catalog, "test") is True and CATALOG_KEY in store.data
    assert await asyncio.to_thread(refresh, "http://127.0.0.1:9", catalog, "test") is False  # Ollama gone
    assert CATALOG_KEY not in store.data and "catalog not written (test)" in caplog.text


# --- What an independent review found ------------------------------------------------


async def test_a_chat_never_waits_on_the_catalog(garden, http):
    await garden.start_backend()
    reads = garden.catalog.reads
    async with http.post(garden.url + "/ollama/api/chat", json=CHAT) as response:
        await response.read()
    async with http.post(garden.url + "/ollama/api/embed", json={"model": "llama3.2", "input": "x"}) as response:
        await response.read()
    assert garden.catalog.reads == reads


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/show", {"model": "llama3.2"}),  # Ollama has POST /api/show only
        ("POST", "/api/show", {"model": "llama3.2", "verbose": 0}),  # Go refuses a number for a bool: a 400
        ("POST", "/api/show", {"model": "llama3.2", "verbose": ""}),
        ("POST", "/api/show", {"model": "llama3.2", "name": 5}),
        ("GET", "/api/tags/", None),  # gin redirects a trailing slash
        ("GET", "/v1/models/llama3.2/", None),
        ("GET", "/api/x/%2e%2e/tags", None),  # gin does not resolve encoded dot segments
        ("GET", "/v1/models/llama3.2%3Alatest", None),
    ],
)
async def test_requests_ollama_would_answer_differently_are_forwarded(garden, http, method, path, body):
    await garden.start_backend()
    calls = len(garden.method.calls)
    async with http.request(method, URL(garden.url + "/ollama" + path, encoded=True), json=body) as response:
        await response.read()
    assert len(garden.method.calls) == calls + 1
    assert garden.method.calls[-1]["path"] == path  # as sent, never normalised


async def test_a_catalog_from_another_ollama_release_or_a_malformed_one_is_not_used(garden, http):
    await garden.start_backend()
    stored = garden.catalog.get(CATALOG_KEY)
    garden.catalog.put(CATALOG_KEY, {**stored, "deployed_ollama": "0.1.0"})  # written before an upgrade
    calls = len(garden.method.calls)
    await same_as_ollama(http, garden, "GET", "/api/version")
    assert len(garden.method.calls) == calls + 1
    garden.catalog.put(CATALOG_KEY, {**stored, "models": ["not", "a", "dict"]})
    await asyncio.sleep(CatalogBackend.CATALOG_TTL)
    async with http.post(garden.url + "/ollama/api/show", json={"model": "llama3.2"}) as response:
        assert response.status == 200  # forwarded, not a 502
    assert len(garden.method.calls) == calls + 2


async def test_a_listing_that_raced_a_store_change_is_not_kept():
    class SlowSource:
        def __init__(self) -> None:
            self.catalog = {"root": {"status": 200, "content_type": "text/plain", "body": b"old"}}
            self.release = asyncio.Event()
            self.reads = 0

        async def read(self):
            self.reads += 1
            seen = dict(self.catalog)
            await self.release.wait()
            return seen

    source = SlowSource()
    catalogs = CatalogBackend(StoredBackend(), source)
    listing = asyncio.ensure_future(catalogs.open({"method": "GET", "path": "/", "headers": [], "body": b""}))
    await asyncio.sleep(0.01)  # the read is in flight
    deleted = await catalogs.open({"method": "DELETE", "path": "/api/delete", "headers": [], "body": b""})
    await deleted.send_body(FakeSink())
    source.catalog = {"root": {"status": 200, "content_type": "text/plain", "body": b"new"}}
    source.release.set()
    assert (await listing).body == b"old"  # it was in flight: fine for that one request
    assert (await catalogs.open({"method": "GET", "path": "/", "headers": [], "body": b""})).body == b"new"  # not kept
    assert source.reads == 2


async def test_a_burst_shares_one_catalog_read_and_a_slow_one_means_forward(monkeypatch):
    class Source:
        reads = 0

        async def read(self):
            Source.reads += 1
            await asyncio.sleep(0.2)
            return {"root": {"status": 200, "content_type": "text/plain", "body": b"Ollama is running"}}

    catalogs = CatalogBackend(StoredBackend(b"forwarded", "text/plain"), Source())
    root = {"method": "GET", "path": "/", "headers": [], "body": b""}
    answers = await asyncio.gather(*(catalogs.open(root) for _ in range(50)))
    assert {a.body for a in answers} == {b"Ollama is running"} and Source.reads == 1
    monkeypatch.setattr(CatalogBackend, "READ_TIMEOUT", 0.05)
    slow = CatalogBackend(StoredBackend(b"forwarded", "text/plain"), Source())
    assert (await slow.open(root)).body == b"forwarded" and catalogs.backend.calls == 0 and slow.backend.calls == 1


async def test_a_copy_changes_the_listing_with_no_further_backend_call(garden, http):
    await garden.start_backend()
    async with http.post(garden.url + "/ollama/api/copy", json={"source": "llama3.2", "destination": "mine"}) as response:
        assert response.status == 200
    calls = len(garden.method.calls)
    tags = json.loads(await same_as_ollama(http, garden, "GET", "/api/tags"))
    assert "mine:latest" in [m["name"] for m in tags["models"]] and len(garden.method.calls) == calls


class FakeSink:
    def write(self, chunk: bytes) -> bool:
        return True

    async def drain(self) -> None:
        return None
