"""Coding agents through the garden: Anthropic's Messages API (`/v1/messages`, Claude
Code) and OpenAI's Responses API (`/v1/responses`, Codex), with the real anthropic and
openai SDKs against the stand-in, warm and through a slow start; their keys, allowlists,
token accounting and error shapes; Codex's zstd request bodies (proxy.encodings)."""

from __future__ import annotations

import asyncio
import gzip
import json
import time

import aiohttp
import anthropic
import openai
import pytest
import zstandard

from backend.relay import OllamaRelay
from config import KeyPolicy
from proxy.transport import InProcessBackend
from tests.conftest import scraped_tokens
from tests.ollama_standin import tokens

KEYS = ("alice:sk-alice-secret", "bob:sk-bob-secret")
POLICY = (("bob", KeyPolicy(models=("llama3.2",))), ("*", KeyPolicy()))
MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]
REPLY = "".join(tokens(8))
EARLY = 1.0  # GATEWAY_EARLY_HEAD_S=1
START = 2.0  # a cold start longer than EARLY


pytestmark = pytest.mark.usefixtures("fast_keepalive")


@pytest.fixture
async def shared(standin, start_gateway):
    """A local gateway with named keys, bob's limited to llama3.2; (url, stand-in state)."""
    url, state = standin
    backend = InProcessBackend(OllamaRelay(url))
    return await start_gateway(backend, gateway_api_keys=KEYS, gateway_key_policy=POLICY, ollama_model_list=("llama3.2",)), state


@pytest.fixture
async def cold(make_modal_garden):
    """A Modal-shaped garden whose GPU container takes START seconds to come up."""
    garden = await make_modal_garden(gateway_early_head_s=EARLY)
    garden.method.start_delay = START
    return garden


def claude(gateway: str, key: str = "sk-alice-secret") -> anthropic.AsyncAnthropic:
    """As Claude Code is set up: ANTHROPIC_BASE_URL=<gateway>/ollama, the key as x-api-key."""
    return anthropic.AsyncAnthropic(base_url=gateway + "/ollama", api_key=key, max_retries=0)


def codex(gateway: str, key: str = "sk-alice-secret") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway + "/ollama/v1", api_key=key, max_retries=0)


async def counted_tokens(gateway: str) -> dict[tuple[str, str, str], float]:
    return await scraped_tokens(gateway, {"X-API-Key": "sk-alice-secret"})


async def test_the_anthropic_sdk_warm_and_its_tokens_counted(shared):
    gateway, state = shared
    async with claude(gateway) as client:
        message = await client.messages.create(model="llama3.2", max_tokens=8, messages=MESSAGES)
        assert message.content[0].text == REPLY and message.usage.output_tokens == 8
        async with client.messages.stream(model="llama3.2", max_tokens=5, messages=MESSAGES) as stream:
            text = [piece async for piece in stream.text_stream]
            final = await stream.get_final_message()
    assert text == tokens(5) and final.stop_reason == "end_turn"
    assert "x-api-key" not in {k.lower() for k in state.seen[-1].headers}  # the gateway's key stays with it
    assert await counted_tokens(gateway) == {
        ("alice", "llama3.2:latest", "prompt"): 24, ("alice", "llama3.2:latest", "completion"): 13,
    }  # fmt: skip


async def test_the_openai_sdk_responses_warm_and_its_tokens_counted(shared):
    gateway, _ = shared
    async with codex(gateway, "sk-bob-secret") as client:
        response = await client.responses.create(model="llama3.2", input="Why is the sky blue?", max_output_tokens=8)
        assert response.output_text == REPLY
        events = [event async for event in await client.responses.create(model="llama3.2", input="hi", max_output_tokens=4, stream=True)]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "".join(tokens(4))
    assert events[-1].type == "response.completed"
    assert await counted_tokens(gateway) == {("bob", "llama3.2:latest", "prompt"): 24, ("bob", "llama3.2:latest", "completion"): 12}


async def test_both_sdks_stream_through_a_slow_start(cold):
    async with claude(cold.url) as client:
        started = time.monotonic()
        async with client.messages.stream(model="llama3.2", max_tokens=8, messages=MESSAGES) as stream:
            text = "".join([piece async for piece in stream.text_stream])
    assert text == REPLY and time.monotonic() - started >= START
    cold.method.scale_to_zero()
    async with codex(cold.url) as client:
        started = time.monotonic()
        stream = await client.responses.create(model="llama3.2", input="hi", stream=True)
        events = [event async for event in stream]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == REPLY
    assert events[-1].type == "response.completed" and time.monotonic() - started >= START


@pytest.mark.parametrize(
    ("path", "body", "content_type", "filler"),
    [
        ("/v1/messages", {"model": "llama3.2", "max_tokens": 8, "messages": MESSAGES, "stream": True}, "text/event-stream", b'event: ping\ndata: {"type": "ping"}\n\n'),
        ("/v1/responses", {"model": "llama3.2", "input": "hi", "stream": True}, "text/event-stream", b": keep-alive\n\n"),
        ("/api/pull", {"model": "qwen3:0.6b"}, "application/x-ndjson", b" "),
        ("/api/push", {"model": "llama3.2"}, "application/x-ndjson", b" "),
        ("/api/create", {"model": "mine", "from": "llama3.2"}, "application/x-ndjson", b" "),
    ],
)
async def test_each_long_stream_gets_the_early_head_and_keepalives_in_its_own_format(cold, path, body, content_type, filler):
    async with aiohttp.ClientSession() as http:
        sent = time.monotonic()
        async with http.post(cold.url + "/ollama" + path, json=body) as response:
            head_after = time.monotonic() - sent
            assert response.status == 200 and response.headers["Content-Type"] == content_type
            received = await response.read()
    assert EARLY <= head_after < START  # the gateway's head, long before the backend's
    fillers = 0
    while received.startswith(filler):
        received, fillers = received[len(filler) :], fillers + 1
    assert fillers >= 2  # every 0.3 s for the second the container still needed
    if content_type == "application/x-ndjson":
        assert json.loads(received.splitlines()[-1]) == {"status": "success"}
    else:
        assert received.startswith(b"event: ") and b"event: ping" not in received  # then Ollama's own events only


async def test_a_progress_stream_told_not_to_stream_waits_for_its_answer(cold):
    async with aiohttp.ClientSession() as http, http.post(cold.url + "/ollama/api/pull", json={"model": "qwen3:0.6b", "stream": False}) as response:
        assert response.headers["Content-Type"].startswith("application/json")
        assert await response.json() == {"status": "success"}


async def test_an_unknown_model_during_a_slow_start_raises_with_ollamas_message_in_both_sdks(cold):
    async with claude(cold.url) as client:
        with pytest.raises(anthropic.APIStatusError) as raised:
            async with client.messages.stream(model="ghost", max_tokens=8, messages=MESSAGES) as stream:
                async for _ in stream:
                    pass
    assert raised.value.status_code == 200  # told in band, after the gateway's early head
    assert raised.value.body == {"type": "error", "error": {"type": "not_found_error", "message": "model 'ghost' not found"}}
    assert "model 'ghost' not found" in str(raised.value)
    cold.method.scale_to_zero()
    async with codex(cold.url) as client:
        with pytest.raises(openai.APIError) as info:
            async for _ in await client.responses.create(model="ghost", input="hi", stream=True):
                pass
    assert not isinstance(info.value, openai.APIStatusError)  # raised from the stream, not from a status
    assert info.value.message == "model 'ghost' not found" and info.value.body["type"] == "not_found_error"


async def test_the_responses_error_event_is_also_the_one_codex_reads(cold):
    """Codex (codex-rs/codex-api/src/sse/responses.rs) reads the `type` of each event's
    data, and on `response.failed` shows `response.error.message`; other events it skips."""
    async with aiohttp.ClientSession() as http:
        body = {"model": "ghost", "input": "hi", "stream": True}
        async with http.post(cold.url + "/ollama/v1/responses", json=body) as response:
            received = await response.read()
    events = [e for e in received.split(b"\n\n") if e and not e.startswith(b":")]
    assert len(events) == 1 and events[0].startswith(b"event: response.failed\ndata: ")
    data = json.loads(events[0].partition(b"data: ")[2])
    assert data["type"] == "response.failed" and data["response"]["error"]["message"] == "model 'ghost' not found"


async def test_a_stream_that_breaks_midway_raises_in_both_sdks(shared):
    gateway, state = shared
    state.die_after = 4  # Ollama (or its container) dies after a few events
    async with claude(gateway) as client:
        with pytest.raises(anthropic.APIStatusError) as raised:
            async with client.messages.stream(model="llama3.2", max_tokens=8, messages=MESSAGES) as stream:
                async for _ in stream:
                    pass
    assert raised.value.body["error"]["type"] == "api_error"
    assert raised.value.body["error"]["message"].startswith("upstream stream ended early")
    async with codex(gateway) as client:
        with pytest.raises(openai.APIError) as info:
            async for _ in await client.responses.create(model="llama3.2", input="hi", stream=True):
                pass
    assert info.value.message.startswith("upstream stream ended early")


async def test_a_limited_key_gets_anthropics_403_and_a_wrong_key_its_401(shared):
    gateway, state = shared
    async with claude(gateway, "sk-bob-secret") as bob:
        with pytest.raises(anthropic.PermissionDeniedError) as refused:
            await bob.messages.create(model="glm-4.7-flash:q8_0", max_tokens=8, messages=MESSAGES)
        assert (await bob.messages.create(model="llama3.2", max_tokens=2, messages=MESSAGES)).content[0].text == "".join(tokens(2))
    assert refused.value.body == {"type": "error", "error": {"type": "permission_error", "message": "the key 'bob' may not use the model 'glm-4.7-flash:q8_0'"}}
    async with claude(gateway, "sk-wrong") as stranger:
        with pytest.raises(anthropic.AuthenticationError) as unknown:
            await stranger.messages.create(model="llama3.2", max_tokens=8, messages=MESSAGES)
    assert unknown.value.body["type"] == "error" and unknown.value.body["error"]["type"] == "authentication_error"
    assert "X-API-Key" in unknown.value.body["error"]["message"]  # how Claude Code sends ANTHROPIC_API_KEY
    async with codex(gateway, "sk-bob-secret") as bob:
        with pytest.raises(openai.PermissionDeniedError) as refused:
            await bob.responses.create(model="glm-4.7-flash:q8_0", input="hi")
    assert refused.value.body["type"] == "permission_error"  # the Responses API keeps OpenAI's shape
    assert [seen.path for seen in state.seen] == ["/v1/messages"]  # only the allowed request reached Ollama


async def test_the_gateways_other_errors_on_v1_messages_are_anthropics_too(shared):
    gateway, _ = shared
    headers = {"X-API-Key": "sk-alice-secret"}
    reader, writer = await asyncio.open_connection(*gateway.removeprefix("http://").split(":"))
    writer.write(b"POST /ollama/v1/messages HTTP/1.1\r\nHost: x\r\nX-API-Key: sk-alice-secret\r\nContent-Length: 209715200\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")).split(b":")[1])
    too_large = int(head.split()[1]), json.loads(await reader.readexactly(length))
    writer.close()
    async with aiohttp.ClientSession() as http:
        async with http.put(gateway + "/ollama/v1/messages/count_tokens", headers=headers) as response:
            not_allowed = response.status, await response.json()
    assert too_large[0] == 413 and too_large[1]["error"]["type"] == "request_too_large"
    assert not_allowed[0] == 405 and not_allowed[1]["type"] == "error" and not_allowed[1]["error"]["type"] == "invalid_request_error"


async def test_claude_codes_keyless_head_at_start_is_refused_without_waking_anything(shared):
    gateway, state = shared
    async with aiohttp.ClientSession() as http:
        for path in ("/", "/ollama", "/ollama/"):
            async with http.head(gateway + path) as response:
                assert response.status == 401
    assert state.seen == []


async def test_a_zstd_or_gzip_body_on_v1_responses_reaches_ollama_decoded(shared):
    gateway, state = shared
    body = json.dumps({"model": "llama3.2", "input": "Why is the sky blue?", "max_output_tokens": 3, "tools": ["x" * 50_000]}).encode()
    headers = {"X-API-Key": "sk-bob-secret", "Content-Type": "application/json"}  # bob's allowlist reads the decoded body
    async with aiohttp.ClientSession() as http:
        for encoding, compress in (("zstd", zstandard.ZstdCompressor().compress), ("gzip", gzip.compress)):
            async with http.post(gateway + "/ollama/v1/responses", data=compress(body), headers={**headers, "Content-Encoding": encoding}) as response:
                assert response.status == 200 and (await response.json())["output"][0]["content"][0]["text"] == "".join(tokens(3))
            seen = state.seen[-1]
            assert seen.body == body and "content-encoding" not in {k.lower() for k in seen.headers}
            assert int(seen.headers["Content-Length"]) == len(body)
        refused = {"model": "glm-4.7-flash:q8_0", "input": "hi"}
        compressed = zstandard.ZstdCompressor().compress(json.dumps(refused).encode())
        async with http.post(gateway + "/ollama/v1/responses", data=compressed, headers={**headers, "Content-Encoding": "zstd"}) as response:
            assert response.status == 403
    assert len(state.seen) == 2


def zstd_bomb(megabytes: int) -> bytes:
    """A Responses request of `megabytes` MB that zstd packs into a few kilobytes."""
    compressor = zstandard.ZstdCompressor().compressobj()
    parts = [compressor.compress(b'{"model": "llama3.2", "input": "')]
    parts += [compressor.compress(b" " * (1024 * 1024)) for _ in range(megabytes)]
    parts += [compressor.compress(b'"}'), compressor.flush()]
    bomb = b"".join(parts)
    assert len(bomb) < megabytes * 1024
    return bomb


async def test_a_zstd_bomb_is_refused_at_the_cap_and_other_routes_keep_415(standin, start_gateway):
    url, state = standin
    gateway = await start_gateway(InProcessBackend(OllamaRelay(url)), gateway_max_body_mb=1)
    bomb = zstd_bomb(256)
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway + "/ollama/v1/responses", data=bomb, headers={"Content-Encoding": "zstd"}) as response:
            assert response.status == 413
            error = (await response.json())["error"]
        assert error["message"].startswith("request body over 1 MB (GATEWAY_MAX_BODY_MB)")
        async with http.post(gateway + "/ollama/v1/responses", data=b"not zstd", headers={"Content-Encoding": "zstd"}) as response:
            assert response.status == 400 and "not valid zstd" in (await response.json())["error"]["message"]
        for path, family_key in (("/v1/chat/completions", "message"), ("/v1/messages", "message"), ("/api/chat", None)):
            async with http.post(gateway + "/ollama" + path, data=gzip.compress(b"{}"), headers={"Content-Encoding": "gzip"}) as response:
                assert response.status == 415
                error = (await response.json())["error"]
                assert "not accepted" in (error[family_key] if family_key else error)
        async with http.post(gateway + "/ollama/v1/responses", data=gzip.compress(b"{}"), headers={"Content-Encoding": "br"}) as response:
            assert response.status == 415
    assert state.seen == []


async def test_a_decompressed_body_stops_at_ollamas_20_mb_whatever_the_gateway_allows(standin, start_gateway):
    # Ollama's ResponsesMiddleware reads at most 20 MB of a zstd body: a bigger one is
    # refused here, before it costs the gateway more memory or reading.
    url, state = standin
    gateway = await start_gateway(InProcessBackend(OllamaRelay(url)), gateway_max_body_mb=100)
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway + "/ollama/v1/responses", data=zstd_bomb(21), headers={"Content-Encoding": "zstd"}) as response:
            assert response.status == 413
            assert (await response.json())["error"]["message"].startswith("request body over 20 MB (decompressed: Ollama reads no more)")
        async with http.post(gateway + "/ollama/v1/responses", data=zstd_bomb(19), headers={"Content-Encoding": "zstd"}) as response:
            assert response.status == 200
    assert [seen.path for seen in state.seen] == ["/v1/responses"]
