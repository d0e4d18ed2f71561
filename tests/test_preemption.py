"""A preempted GPU never splices two answers (proxy.transport, backend.wire).

Modal re-runs a preempted input in a new container and its client skips the frames it
already has by index (tests/fake_modal.py does the same), so without run marks a stream
would go on with the rest of a second generation. The stand-in numbers its generations
(`the#1`, `the#2`, ...): one answer's tokens all carry one number.
"""

from __future__ import annotations

import json
import logging
import re
import uuid

import aiohttp
import anthropic
import httpx
import ollama
import openai
import pytest

from backend.wire import END, head_frame
from proxy import forward
from proxy.transport import PREEMPTED, RemoteBackend
from tests.conftest import wait_for
from tests.fake_modal import detached_call

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
TOKENS = 40
# Frames of a native chat stream: the head, one per line (a token, then the final one), the end.
FRAMES = 1 + TOKENS + 1 + 1


@pytest.fixture
async def garden(make_modal_garden):
    garden = await make_modal_garden()
    garden.state.number_generations = True
    garden.state.token_count = TOKENS
    garden.state.token_delay = 0.01  # one line per frame; a re-run is still generating when stopped
    return garden


def generations(text: str) -> set[str]:
    return set(re.findall(r"#(\d+)", text))


async def metrics(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as response:
        return await response.text()


def access_lines(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "proxy.access"]


# -- told: part of the answer was sent ---------------------------------------------------


async def test_ndjson_preempted_mid_stream_ends_with_an_error_line_never_a_spliced_answer(garden, ollama_clients, caplog):
    caplog.set_level(logging.INFO, logger="proxy.access")
    garden.method.preempt(4)  # the head and three lines
    parts = []
    with pytest.raises(ollama.ResponseError) as raised:
        async for part in await ollama_clients(garden.url + "/ollama").chat(**CHAT, stream=True):
            parts.append(part)
    assert raised.value.error == PREEMPTED and "preempted" in PREEMPTED and "incomplete" in PREEMPTED
    assert len(parts) == 3 and not any(part.done for part in parts)
    assert generations("".join(part.message.content for part in parts)) == {"1"}  # the first run's, only
    # The re-run is stopped as a client leaving stops it, not left generating for nobody.
    assert garden.stops.sent == [garden.method.calls[0]["request_id"]]
    assert await wait_for(lambda: garden.state.streams_cancelled == 2)  # the preempted run, then the re-run
    assert garden.state.streams_finished == 0
    assert await wait_for(lambda: len(access_lines(caplog)) == 1)
    (line,) = access_lines(caplog)
    assert line["status"] == 200 and line["error"] == "backend_preempted" and "reruns" not in line
    assert 'garden_backend_reruns_total{outcome="told",pool="default"} 1.0' in await metrics(garden.url)


async def test_the_ndjson_bytes_end_with_the_error_and_no_done(garden, http):
    garden.method.preempt(4)
    async with http.post(garden.url + "/ollama/api/chat", json=CHAT) as response:
        body = await response.read()
    lines = body.splitlines()
    assert len(lines) == 4 and b'"done": true' not in body and b'"done":true' not in body
    assert json.loads(lines[-1]) == {"error": PREEMPTED}


async def test_sse_preempted_mid_stream_ends_with_an_error_event_and_no_done(garden, http):
    garden.method.preempt(4)
    sdk = openai.AsyncOpenAI(base_url=garden.url + "/ollama/v1", api_key="unused", max_retries=0)
    text = []
    with pytest.raises(openai.APIError) as raised:
        async for chunk in await sdk.chat.completions.create(**CHAT, stream=True):
            text.append(chunk.choices[0].delta.content or "")
    await sdk.close()
    assert raised.value.message == PREEMPTED
    assert len(text) == 3 and generations("".join(text)) == {"1"}
    garden.method.preempt(4)
    async with http.post(garden.url + "/ollama/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        body = await response.read()
    assert b"[DONE]" not in body and b'"finish_reason": "stop"' not in body
    assert body.endswith(b"\n\n") and json.loads(body.split(b"\n\n")[-2].removeprefix(b"data: "))["error"]["message"] == PREEMPTED


async def test_a_declared_length_body_is_cut_short(garden, ollama_clients, http):
    garden.state.body_pieces = 4  # "stream": false, the body arriving in pieces
    garden.method.preempt(1)  # the head frame, which carries the body's first piece
    with pytest.raises(httpx.RemoteProtocolError):
        await ollama_clients(garden.url + "/ollama").chat(**CHAT, stream=False)
    garden.method.preempt(2)
    async with http.post(garden.url + "/ollama/api/chat", json={**CHAT, "stream": False}) as response:
        length = int(response.headers["Content-Length"])
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    assert length > 0
    assert await wait_for(lambda: len(garden.stops.sent) == 2)  # both re-runs stopped


async def test_preempted_again_before_the_caller_saw_the_rerun_is_still_caught(garden, ollama_clients):
    # The re-run is preempted too, after frames the caller skips; the third run's frames are caught.
    garden.method.preempt(6, 3)
    with pytest.raises(ollama.ResponseError) as raised:
        async for _ in await ollama_clients(garden.url + "/ollama").chat(**CHAT, stream=True):
            pass
    assert raised.value.error == PREEMPTED
    assert len(garden.method.runs) == 3


async def test_told_inside_an_early_head_after_a_cold_start(make_modal_garden, http, monkeypatch):
    monkeypatch.setattr(forward, "KEEPALIVE_INTERVAL", 0.2)
    garden = await make_modal_garden(gateway_early_head_s=0.2)
    garden.state.number_generations, garden.state.token_delay = True, 0.01
    garden.method.start_delay = 0.7
    garden.method.preempt(4)
    async with http.post(garden.url + "/ollama/api/chat", json=CHAT) as response:
        body = await response.read()
    filler, _, stream = body.partition(b"{")
    lines = (b"{" + stream).splitlines()
    assert filler.strip(b" ") == b"" and len(lines) == 4 and json.loads(lines[-1]) == {"error": PREEMPTED}
    assert generations(b"".join(lines[:-1]).decode()) == {"1"}


# -- invisible: nothing of the body was sent -----------------------------------------------


async def test_preempted_after_the_head_only_gives_one_whole_answer(garden, ollama_clients, caplog):
    caplog.set_level(logging.INFO, logger="proxy.access")
    garden.method.preempt(1)
    parts = [part async for part in await ollama_clients(garden.url + "/ollama").chat(**CHAT, stream=True)]
    assert len(parts) == TOKENS + 1 and parts[-1].done is True
    assert len(generations("".join(part.message.content for part in parts))) == 1  # one generation's tokens
    first, fresh = garden.method.calls
    assert garden.stops.sent == [first["request_id"]] and fresh["request_id"] != first["request_id"]
    assert await wait_for(lambda: garden.state.streams_cancelled == 2 and garden.state.streams_finished == 1)
    assert await wait_for(lambda: len(access_lines(caplog)) == 1)
    (line,) = access_lines(caplog)
    assert line["reruns"] == 1 and "error" not in line and line["status"] == 200
    assert 'garden_backend_reruns_total{outcome="invisible",pool="default"} 1.0' in await metrics(garden.url)


async def test_sse_preempted_after_the_head_only_gives_one_whole_answer(garden):
    garden.method.preempt(1)
    sdk = openai.AsyncOpenAI(base_url=garden.url + "/ollama/v1", api_key="unused", max_retries=0)
    chunks = [chunk async for chunk in await sdk.chat.completions.create(**CHAT, stream=True)]
    await sdk.close()
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop" and len(generations(text)) == 1 and text.count("#") == TOKENS


async def test_stream_false_preempted_after_its_head_frame_is_whole(garden, ollama_clients):
    # Ollama sends a non-streamed answer with its head: it crosses in the head's frame, so
    # the client has all of it, whatever happens to the run's last frame.
    garden.method.preempt(1)
    answer = await ollama_clients(garden.url + "/ollama").chat(**CHAT, stream=False)
    assert answer.done is True and answer.message.content.count("#1") == TOKENS


async def test_preempted_during_a_cold_start_gives_one_whole_answer(make_modal_garden, ollama_clients, monkeypatch):
    monkeypatch.setattr(forward, "KEEPALIVE_INTERVAL", 0.2)
    garden = await make_modal_garden(gateway_early_head_s=0.2)
    garden.state.number_generations, garden.state.token_delay = True, 0.01
    garden.method.start_delay = 0.5
    garden.method.preempt(0, 1)  # dies while starting; its re-run after its head
    parts = [part async for part in await ollama_clients(garden.url + "/ollama").chat(**CHAT, stream=True)]
    assert parts[-1].done is True and len(generations("".join(part.message.content for part in parts))) == 1
    assert len(garden.method.runs) == 4  # the first, its re-run, that one's re-run, the gateway's fresh call


async def test_preempted_twice_in_a_row_still_gives_one_whole_answer(garden, ollama_clients, caplog):
    caplog.set_level(logging.INFO, logger="proxy.access")
    garden.method.preempt(1, None, 1, None)  # a call and its re-run, twice; then a run left alone
    parts = [part async for part in await ollama_clients(garden.url + "/ollama").chat(**CHAT, stream=True)]
    assert parts[-1].done is True and len(generations("".join(part.message.content for part in parts))) == 1
    assert garden.stops.sent == [call["request_id"] for call in garden.method.calls[:2]]
    assert await wait_for(lambda: len(access_lines(caplog)) == 1) and access_lines(caplog)[0]["reruns"] == 2


# -- the seam ---------------------------------------------------------------------------------


async def test_the_seam_skips_indices_across_a_rerun_as_modals_client_does():
    # Without run marks this is the splice the gateway must catch: run 1's first three
    # frames, then run 2's from the fourth on.
    runs = []

    async def produce(request):
        runs.append(request)
        for i in range(1, 7):
            yield f"run{len(runs)}-frame{i}"

    call = detached_call(produce, preemptions=[3])
    got = [frame async for frame in call({"x": 1})]
    assert got == ["run1-frame1", "run1-frame2", "run1-frame3", "run2-frame4", "run2-frame5", "run2-frame6"]
    assert runs == [{"x": 1}, {"x": 1}] and runs[0] is not runs[1]  # the same pickled input, re-run


async def test_a_shorter_rerun_ends_the_stream_and_is_told(start_gateway, http):
    # The re-run yields fewer frames than the caller has: modal's client ends the stream
    # (items_received >= items_total) with no frame of it; the missing end frame tells.
    count = iter([30, 2])

    async def produce(request):
        run, lines = uuid.uuid4().int, next(count)
        yield {**head_frame(200, [("Content-Type", "application/x-ndjson")]), "run": run}
        for i in range(lines):
            yield (run, b'{"n": %d}\n' % i)
        yield (run, END)

    from backend.cancel import LocalStopSignals

    gateway = await start_gateway(RemoteBackend(detached_call(produce, preemptions=[6]), LocalStopSignals()))
    async with http.post(gateway + "/ollama/api/chat", json=CHAT) as response:
        body = await response.read()
    assert body.splitlines()[-1] == json.dumps({"error": PREEMPTED}).encode() and len(body.splitlines()) == 6


def test_the_stand_in_numbers_its_generations():
    from tests.ollama_standin import StandinState, generation

    state = StandinState(number_generations=True)
    assert generations("".join(generation(state, 3))) == {"1"} and generations("".join(generation(state, 3))) == {"2"}


async def test_a_body_read_whole_by_the_gateway_survives_a_preemption_after_its_end():
    # A listing the gateway filters, an error it reads: all of a declared length came in the
    # head's frame, and only the end frame was lost. A preemption before that is told.
    from backend.cancel import LocalStopSignals
    from proxy.transport import read_body

    async def produce(request):
        run = uuid.uuid4().int
        yield {**head_frame(200, [("Content-Type", "application/json"), ("Content-Length", "11")]), "run": run, "body": b'{"models":['}
        yield (run, END)

    backend = RemoteBackend(detached_call(produce, preemptions=[1]), LocalStopSignals())
    response = await backend.open({"method": "GET", "path": "/api/tags", "headers": [], "body": b""})
    assert await read_body(response, 1024) == b'{"models":['
    await response.aclose()

    async def longer(request):
        run = uuid.uuid4().int
        yield {**head_frame(200, [("Content-Length", "4")]), "run": run, "body": b"ab"}
        yield (run, b"cd")
        yield (run, END)

    backend = RemoteBackend(detached_call(longer, preemptions=[1]), LocalStopSignals())
    response = await backend.open({"method": "GET", "path": "/api/tags", "headers": [], "body": b""})
    with pytest.raises(Exception, match="preempted"):
        await read_body(response, 1024)
    await response.aclose()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", CHAT),
        ("/api/generate", {"model": "llama3.2", "prompt": "hi"}),
        ("/api/chat", {**CHAT, "stream": False}),
        ("/v1/chat/completions", {**CHAT, "stream": True}),
        ("/v1/chat/completions", CHAT),
    ],
)
@pytest.mark.parametrize("after", [0, 1, 2, 5])
async def test_whenever_a_run_is_preempted_the_client_gets_one_generation_or_the_error(garden, http, path, body, after):
    garden.method.preempt(after)
    async with http.post(garden.url + "/ollama" + path, json=body) as response:
        try:
            data = (await response.read()).decode()
        except aiohttp.ClientPayloadError:
            data = None  # a declared length cut short
    assert response.status == 200
    if data is None:
        assert "stream" in body and body["stream"] is False and after > 1
    elif PREEMPTED in data:
        assert after > 1 and len(generations(data)) <= 1 and "[DONE]" not in data and '"done": true' not in data
    else:
        assert len(generations(data)) == 1 and data.count("#") == TOKENS


async def test_a_head_request_preempted_before_its_end_frame_is_answered_and_counted(garden, http, caplog):
    caplog.set_level(logging.INFO, logger="proxy.access")
    garden.method.preempt(1)  # the re-run's end frame comes instead of the first run's
    async with http.head(garden.url + "/ollama/api/tags") as response:
        assert response.status == 200 and await response.read() == b""
    assert await wait_for(lambda: len(access_lines(caplog)) == 1)  # written once the handler returns
    assert access_lines(caplog)[0]["reruns"] == 1 and len(garden.method.calls) == 2


async def test_the_coding_agents_apis_preempted_mid_stream_raise_with_the_preemption_message(garden):
    # Claude Code's /v1/messages and Codex's /v1/responses: told in their own event forms.
    garden.method.preempt(5)
    claude = anthropic.AsyncAnthropic(base_url=garden.url + "/ollama", api_key="unused", max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as raised:
        async with claude.messages.stream(model="llama3.2", max_tokens=TOKENS, messages=CHAT["messages"]) as stream:
            async for _ in stream:
                pass
    await claude.close()
    assert raised.value.body["error"]["message"] == PREEMPTED
    garden.method.preempt(5)
    codex = openai.AsyncOpenAI(base_url=garden.url + "/ollama/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIError) as info:
        async for _ in await codex.responses.create(model="llama3.2", input="hi", stream=True):
            pass
    await codex.close()
    assert info.value.message == PREEMPTED
