"""proxy.observe: metrics and access logs, read the way an operator reads them."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest
from prometheus_client import values
from prometheus_client.parser import text_string_to_metric_families

from backend.relay import OllamaRelay
from backend.routes import route_of
from proxy.observe import route_family
from proxy.transport import InProcessBackend

KEY = "sk-observe-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
SECRET_PROMPT = "my very private prompt"
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": SECRET_PROMPT}]}


@pytest.mark.parametrize(
    ("path", "family"),
    [
        ("/api/chat", "api/chat"),
        ("/api/chat?x=1", "api/chat"),
        ("/api/generate/", "api/generate"),
        ("/v1/chat/completions", "v1/chat/completions"),
        ("/v1/models/llama3.2:latest", "v1/models"),
        ("/api/blobs/sha256:abc", "api/blobs"),
        ("/", "root"),
        ("/random/../path", "other"),
        ("/api/x" + "y" * 500, "other"),
    ],
)
def test_path_family(path, family):
    assert route_family(route_of(path)) == family


@pytest.fixture
async def observed(standin, start_gateway):
    url, state = standin
    gateway = await start_gateway(InProcessBackend(OllamaRelay(url)), gateway_api_keys=(KEY,))
    return gateway, state


async def scrape(http, gateway) -> dict:
    async with http.get(gateway + "/metrics", headers=AUTH) as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_metrics_count_requests_bytes_latency_disconnects_and_errors(observed, http):
    gateway, state = observed
    async with http.post(gateway + "/ollama/api/chat", json=CHAT, headers=AUTH) as response:
        body = await response.read()
    async with http.post(gateway + "/ollama/api/chat", json={"model": "ghost"}, headers=AUTH) as response:
        assert response.status == 404
        not_found = await response.read()
    async with http.get(gateway + "/ollama/api/tags") as response:
        assert response.status == 401
    state.token_delay = 0.02
    async with aiohttp.ClientSession() as other:
        response = await other.post(gateway + "/ollama/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH)
        await response.content.readline()
        response.close()
    await asyncio.sleep(0.2)

    m = await scrape(http, gateway)
    requests = "garden_requests_total"
    backend, refused, no_pool = ("served_by", "backend"), ("served_by", "gateway"), ("pool", "")  # local mode: no pools
    assert m[(requests, (("family", "api/chat"), ("method", "POST"), no_pool, backend, ("status", "200")))] == 1
    assert m[(requests, (("family", "api/chat"), ("method", "POST"), no_pool, backend, ("status", "404")))] == 1
    assert m[(requests, (("family", "api/tags"), ("method", "GET"), no_pool, refused, ("status", "401")))] == 1
    assert m[(requests, (("family", "v1/chat/completions"), ("method", "POST"), no_pool, backend, ("status", "200")))] == 1
    assert m[("garden_time_to_first_byte_seconds_count", (("family", "api/chat"),))] == 2
    assert m[("garden_request_duration_seconds_count", (("family", "api/chat"),))] == 2
    relayed = m[("garden_bytes_relayed_total", ())]
    assert relayed >= len(body) + len(not_found) and relayed < len(body) + len(not_found) + 2000
    assert m[("garden_client_disconnects_total", (("family", "v1/chat/completions"),))] == 1
    assert m[("garden_gateway_errors_total", (("kind", "unauthorized"),))] == 1
    assert m[("garden_streams_in_flight", ())] == 0


async def test_metrics_sit_behind_the_api_key(observed, http):
    gateway, _ = observed
    async with http.get(gateway + "/metrics") as response:
        assert response.status == 401


async def test_metrics_without_keys_are_open(standin, start_gateway, http):
    url, _ = standin
    gateway = await start_gateway(InProcessBackend(OllamaRelay(url)))
    async with http.get(gateway + "/metrics") as response:
        assert response.status == 200 and "garden_requests_total" in await response.text()


async def test_gateway_errors_are_counted_by_kind(start_gateway, http):
    gateway = await start_gateway(InProcessBackend(OllamaRelay("http://127.0.0.1:9")))
    for _ in range(2):
        async with http.get(gateway + "/ollama/api/tags") as response:
            assert response.status == 503
    async with http.put(gateway + "/ollama/api/tags") as response:
        assert response.status == 405
    m = await scrape(http, gateway)
    assert m[("garden_gateway_errors_total", (("kind", "backend_unavailable"),))] == 2
    assert m[("garden_gateway_errors_total", (("kind", "method_not_allowed"),))] == 1


async def test_counting_work_does_not_grow_with_the_number_of_chunks(observed, http, monkeypatch):
    # Each locked metric update goes through MutexValue.inc/set: count them per request.
    gateway, state = observed
    state.token_delay = 0.001
    calls = []
    for name in ("inc", "set"):
        original = getattr(values.MutexValue, name)
        monkeypatch.setattr(values.MutexValue, name, lambda self, *a, _o=original, **k: (calls.append(1), _o(self, *a, **k))[1])

    async def locked_updates(tokens: int) -> int:
        calls.clear()
        body = {**CHAT, "options": {"num_predict": tokens}}
        async with http.post(gateway + "/ollama/api/chat", json=body, headers=AUTH) as response:
            assert (await response.read()).count(b"\n") == tokens + 1
        await asyncio.sleep(0.05)
        return len(calls)

    few, many = await locked_updates(3), await locked_updates(300)
    assert few > 0 and many == few


async def test_one_access_log_line_per_request_without_prompt_or_key(observed, http, caplog):
    gateway, state = observed
    caplog.set_level(logging.INFO, "proxy.access")
    async with http.post(gateway + "/ollama/api/chat?verbose=1", json=CHAT, headers=AUTH) as response:
        body = await response.read()
    async with http.get(gateway + "/ollama/api/tags", headers={"Authorization": "Bearer sk-wrong"}) as response:
        assert response.status == 401
        refusal = await response.read()
    state.first_token_delay = 2
    request = asyncio.ensure_future(http.post(gateway + "/ollama/api/generate", json={"model": "llama3.2", "prompt": SECRET_PROMPT}, headers=AUTH))
    await asyncio.sleep(0.2)
    request.cancel()
    await asyncio.sleep(0.2)

    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "proxy.access"]
    assert len(lines) == 3
    chat, refused, left = lines
    assert {k: chat[k] for k in ("method", "path", "status", "model", "bytes_out", "client_left")} == {
        "method": "POST", "path": "/api/chat", "status": 200, "model": "llama3.2", "bytes_out": len(body), "client_left": False,
    }  # fmt: skip
    assert 0 <= chat["ttfb_ms"] <= chat["duration_ms"]
    assert refused["status"] == 401 and refused["error"] == "unauthorized" and refused["ttfb_ms"] is None
    assert refused["bytes_out"] == len(refusal) > 0  # the gateway's own error body was sent
    assert left["client_left"] is True and left["status"] == 499 and left["model"] == "llama3.2"
    assert SECRET_PROMPT not in caplog.text and KEY not in caplog.text and "sk-wrong" not in caplog.text
    assert "verbose" not in caplog.text  # no query strings either


async def test_health_reports_version_and_non_secret_config(standin, start_gateway, http):
    url, _ = standin
    gateway = await start_gateway(InProcessBackend(OllamaRelay(url)), gateway_api_keys=(KEY,), ollama_gpu="L40S")
    async with http.get(gateway + "/health") as response:
        health = await response.json()
    assert health["status"] == "ok" and health["version"]
    assert health["config"]["gpu"] == "L40S" and health["config"]["auth"] is True
    assert health["config"]["models"] == ["glm-4.7-flash:q8_0", "glm-4.7-flash:q4_K_M"]
    assert KEY not in json.dumps(health)
