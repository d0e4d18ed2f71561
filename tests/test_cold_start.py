"""Waking up never fails a chat: a stream whose backend is slow to answer (a GPU container
starting, a model loading) gets its head from the gateway, keep-alive bytes the clients
ignore, and then the normal stream, or Ollama's error in band (proxy.forward)."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp
import ollama
import openai
import pytest

from backend.relay import OllamaRelay
from proxy.transport import InProcessBackend
from tests.conftest import wait_for

EARLY = 0.2  # seconds: GATEWAY_EARLY_HEAD_S, scaled down
START = 1.5  # seconds: a cold start several times longer than EARLY
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
REPLY_TOKENS = 8


pytestmark = pytest.mark.usefixtures("fast_keepalive")


@pytest.fixture
async def cold(make_modal_garden):
    """A Modal-shaped garden whose GPU container takes START seconds to come up."""
    garden = await make_modal_garden(gateway_early_head_s=EARLY)
    garden.method.start_delay = START
    return garden


async def read_timed(response: aiohttp.ClientResponse) -> list[tuple[float, bytes]]:
    started = time.monotonic()
    pieces = []
    async for chunk in response.content.iter_any():
        pieces.append((time.monotonic() - started, chunk))
    return pieces


async def test_the_head_comes_early_then_keepalives_then_the_stream(cold):
    async with aiohttp.ClientSession() as http:
        sent = time.monotonic()
        async with http.post(cold.url + "/ollama/api/chat", json=CHAT) as response:
            head_after = time.monotonic() - sent
            assert response.status == 200 and response.headers["Content-Type"] == "application/x-ndjson"
            pieces = await read_timed(response)
    assert EARLY <= head_after < START / 2  # the gateway's head, long before the backend's
    body = b"".join(chunk for _, chunk in pieces)
    filler, _, stream = body.partition(b"{")
    assert filler and set(filler) == {ord(" ")}  # spaces only: no newline, nothing a JSON-lines reader trips on
    lines = (b"{" + stream).splitlines()
    assert len(lines) == REPLY_TOKENS + 1 and json.loads(lines[-1])["done"] is True
    assert len(cold.method.calls) == 1


@pytest.mark.parametrize("client", ["ollama-python", "openai-python"])
async def test_official_clients_get_a_normal_stream_after_a_cold_start(cold, client, ollama_clients):
    started = time.monotonic()
    if client == "ollama-python":
        parts = [part async for part in await ollama_clients(cold.url + "/ollama").chat(**CHAT, stream=True)]
        assert len(parts) == REPLY_TOKENS + 1 and parts[-1].done is True
        text = "".join(part.message.content for part in parts)
    else:
        sdk = openai.AsyncOpenAI(base_url=cold.url + "/ollama/v1", api_key="unused")
        stream = await sdk.chat.completions.create(**CHAT, stream=True)
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
        await sdk.close()
    assert text.startswith("The sky is blue") and time.monotonic() - started >= START


async def test_an_unknown_model_after_the_early_head_raises_each_clients_usual_error(cold, ollama_clients):
    with pytest.raises(ollama.ResponseError) as info:
        async for _ in await ollama_clients(cold.url + "/ollama").chat(model="ghost", messages=CHAT["messages"], stream=True):
            pass
    assert info.value.error == "model 'ghost' not found"
    sdk = openai.AsyncOpenAI(base_url=cold.url + "/ollama/v1", api_key="unused")
    cold.method.scale_to_zero()  # cold again
    with pytest.raises(openai.APIError) as raised:
        async for _ in await sdk.chat.completions.create(model="ghost", messages=CHAT["messages"], stream=True):
            pass
    await sdk.close()
    assert raised.value.message == "model 'ghost' not found" and raised.value.body["type"] == "not_found_error"


async def test_the_error_line_starts_the_stream_not_a_blank_line(cold):
    async with aiohttp.ClientSession() as http, http.post(cold.url + "/ollama/api/chat", json={**CHAT, "model": "ghost"}) as response:
        body = await response.read()
    assert response.status == 200
    assert body.lstrip(b" ").splitlines() == [b'{"error": "model \'ghost\' not found"}']
    assert b"\n\n" not in body and not body.startswith(b"\n")
    async with aiohttp.ClientSession() as http:
        cold.method.scale_to_zero()
        async with http.post(cold.url + "/ollama/v1/chat/completions", json={**CHAT, "model": "ghost", "stream": True}) as response:
            body = await response.read()
    events = [e for e in body.split(b"\n\n") if e]
    assert all(e == b": keep-alive" for e in events[:-1]) and events[-1].startswith(b'data: {"error": {')


async def test_no_head_within_ollama_timeout_ends_the_stream_in_band_and_stops_the_backend(make_modal_garden):
    garden = await make_modal_garden(gateway_early_head_s=EARLY, ollama_timeout=1)
    garden.method.start_delay = 30  # never in time
    async with aiohttp.ClientSession() as http, http.post(garden.url + "/ollama/api/chat", json=CHAT) as response:
        body = await asyncio.wait_for(response.read(), 5)
    assert response.status == 200
    assert json.loads(body.lstrip(b" ")) == {"error": "the backend sent nothing within 1s (a model may still be loading)"}
    assert [call["request_id"] for call in garden.method.calls] == garden.stops.sent  # the container is told


async def test_a_request_that_does_not_stream_keeps_waiting_and_gets_a_504(make_modal_garden):
    garden = await make_modal_garden(gateway_early_head_s=EARLY, ollama_timeout=1)
    garden.method.start_delay = 30
    async with aiohttp.ClientSession() as http, http.post(garden.url + "/ollama/api/chat", json={**CHAT, "stream": False}) as response:
        assert response.status == 504 and response.headers["Retry-After"] == "10"


async def test_a_request_that_does_not_stream_waits_for_the_whole_answer(cold):
    sent = time.monotonic()
    async with aiohttp.ClientSession() as http, http.post(cold.url + "/ollama/v1/chat/completions", json=CHAT) as response:
        body = await response.read()  # OpenAI: no "stream": true
    assert response.status == 200 and time.monotonic() - sent >= START
    assert response.headers["Content-Type"] == "application/json" and body.startswith(b"{")  # no early head, no filler


async def test_a_client_that_leaves_during_the_cold_start_stops_the_backend(cold):
    state = cold.state
    async with aiohttp.ClientSession() as http:
        response = await http.post(cold.url + "/ollama/api/chat", json={**CHAT, "options": {"num_predict": 400}})
        assert response.status == 200  # the early head: the client can now leave and be seen leaving
        await asyncio.sleep(EARLY)
        response.close()
        left = time.monotonic()
    assert await wait_for(lambda: cold.stops.sent == [cold.method.calls[0]["request_id"]], 1.0)
    assert time.monotonic() - left < 1.0
    await asyncio.sleep(START)  # the container comes up, finds the stop, and does nothing
    assert state.streams_finished == 0 and all(p.done() for p in cold.method.producers)


async def test_a_client_that_leaves_while_the_model_loads_stops_ollama_within_a_second(make_modal_garden):
    garden = await make_modal_garden(gateway_early_head_s=EARLY)
    garden.state.first_token_delay = 5.0  # a warm container, a model loading
    async with aiohttp.ClientSession() as http:
        response = await http.post(garden.url + "/ollama/api/chat", json=CHAT)
        assert response.status == 200
        await asyncio.sleep(0.3)
        response.close()
        left = time.monotonic()
    assert await wait_for(lambda: garden.state.streams_cancelled == 1, 1.0)
    assert garden.state.cancel_times[0] - left < 1.0


async def test_local_mode_takes_the_same_path(standin, start_gateway, caplog, ollama_clients):
    url, state = standin
    state.first_token_delay = 1.0  # a local Ollama loading a large model
    gateway = await start_gateway(InProcessBackend(OllamaRelay(url)), gateway_early_head_s=EARLY)
    caplog.set_level(logging.INFO, logger="proxy.access")
    parts = [part async for part in await ollama_clients(gateway + "/ollama").chat(**CHAT, stream=True)]
    assert parts[-1].done is True
    line = json.loads(next(r.getMessage() for r in caplog.records if r.name == "proxy.access"))
    assert line["early_head"] is True and line["ttfb_ms"] < 1000 <= line["backend_wait_ms"]


async def test_the_wait_the_early_head_and_the_cold_start_are_recorded(cold, caplog):
    caplog.set_level(logging.INFO, logger="proxy.access")
    async with aiohttp.ClientSession() as http:
        async with http.post(cold.url + "/ollama/api/chat", json=CHAT) as response:
            await response.read()
        async with http.post(cold.url + "/ollama/api/chat", json=CHAT) as response:  # warm now
            await response.read()
        async with http.get(cold.url + "/metrics") as response:
            metrics = await response.text()
    first, second = [json.loads(r.getMessage()) for r in caplog.records if r.name == "proxy.access"]
    assert first["early_head"] is True and first["cold_start"] is True and first["backend_wait_ms"] >= START * 1000
    assert "early_head" not in second and "cold_start" not in second and second["backend_wait_ms"] < EARLY * 1000
    assert 'garden_early_heads_total{family="api/chat"} 1.0' in metrics
    assert 'garden_cold_starts_total{key="(no key)",pool="default"} 1.0' in metrics
    assert 'garden_backend_wait_seconds_count{family="api/chat"} 2.0' in metrics


async def test_a_400_or_a_backend_that_fails_to_start_is_told_in_band_too(cold, monkeypatch):
    async with aiohttp.ClientSession() as http:
        async with http.post(cold.url + "/ollama/api/chat", json={"messages": CHAT["messages"]}) as response:
            body = await response.read()  # no model: Ollama's 400
        assert response.status == 200 and json.loads(body.lstrip(b" ")) == {"error": "model is required"}

        async def crash(request):
            raise RuntimeError("the container's start-up hook failed")
            yield  # an async generator, as the method is

        cold.method.scale_to_zero()
        monkeypatch.setattr(cold.method, "_produce", crash)
        async with http.post(cold.url + "/ollama/api/chat", json=CHAT) as response:
            body = await response.read()
    assert response.status == 200
    error = json.loads(body.lstrip(b" "))["error"]
    assert error.startswith("the backend could not be reached or failed to start (RuntimeError: the container's start-up hook failed")
