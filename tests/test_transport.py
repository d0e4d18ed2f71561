"""proxy.transport: the seam's implementations, behind a real gateway."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from backend.cancel import LocalStopSignals
from backend.wire import END, head_frame
from proxy.transport import RemoteBackend, UnavailableBackend
from tests.conftest import raw_exchange


async def test_remote_backend_failing_to_start_is_503_json(start_gateway, http):
    def call(request):
        async def frames():
            raise RuntimeError("Ollama did not answer at http://127.0.0.1:11434 within 120s\n  File ...")
            yield b""

        return frames()

    stops = LocalStopSignals()
    gateway = await start_gateway(RemoteBackend(call, stops))
    async with http.post(gateway + "/ollama/api/chat", json={"model": "m"}) as response:
        assert response.status == 503
        message = (await response.json())["error"]
    assert message.startswith("the backend could not be reached or failed to start (RuntimeError: Ollama did not answer")
    assert "File" not in message
    assert stops.sent == []  # a failed backend needs no stop


async def test_no_first_byte_in_time_is_504_and_stops_the_remote_request(start_gateway, http):
    seen = []

    def call(request):
        seen.append(request["request_id"])

        async def frames():
            await asyncio.sleep(30)  # a model that takes forever to load
            yield head_frame(200, [])

        return frames()

    stops = LocalStopSignals()
    gateway = await start_gateway(RemoteBackend(call, stops), ollama_timeout=0.3)
    async with http.post(gateway + "/ollama/api/chat", json={"model": "m"}) as response:
        assert response.status == 504
    assert stops.sent == seen  # the container is told to give up too


async def test_remote_backend_passes_frames_and_a_request_id(start_gateway, http):
    seen = []

    def call(request):
        seen.append(request)

        async def frames():
            yield {**head_frame(201, [("Content-Type", "application/json")]), "run": 7}
            yield (7, b'{"ok":')
            yield (7, b"true}")
            yield (7, END)

        return frames()

    gateway = await start_gateway(RemoteBackend(call, LocalStopSignals()))
    async with http.post(gateway + "/ollama/api/copy?x=1", data=b"{}", headers={"Content-Type": "application/json"}) as response:
        assert response.status == 201
        assert await response.read() == b'{"ok":true}'
    (request,) = seen
    assert request["method"] == "POST" and request["path"] == "/api/copy?x=1" and request["body"] == b"{}"
    assert len(request["request_id"]) == 32


async def test_remote_backend_with_an_empty_stream_is_502(start_gateway, http):
    def call(request):
        async def frames():
            return
            yield b""

        return frames()

    gateway = await start_gateway(RemoteBackend(call, LocalStopSignals()))
    async with http.get(gateway + "/ollama/api/tags") as response:
        assert response.status == 502
        assert "without a response" in (await response.json())["error"]


async def test_unavailable_backend_is_503_with_its_message(start_gateway, http):
    gateway = await start_gateway(UnavailableBackend("install Ollama"))
    async with http.get(gateway + "/ollama/api/tags") as response:
        assert response.status == 503
        assert await response.json() == {"error": "install Ollama"}


async def test_head_through_the_remote_backend_sends_no_stop(standin, start_gateway, http):
    from backend.service import OllamaService
    from tests.test_cancel import remote_gateway_with_stops

    url, _ = standin
    service = OllamaService(url, (), commit=lambda: None)
    gateway, stops, _ = await remote_gateway_with_stops(service, start_gateway)
    for path in ("/", "/api/tags"):
        async with http.head(gateway + "/ollama" + path) as response:
            assert response.status == 200
    assert stops.sent == []
    await service.relay.aclose()


def frames_call(*frames):
    """A Modal-like `call` whose generator yields `frames`, then ends normally."""

    def call(request):
        async def generate():
            for frame in frames:
                yield frame

        return generate()

    return call


async def test_a_remote_body_shorter_than_its_content_length_is_cut_short(start_gateway, http):
    # The generator ends without an error but before the length its head declared (a
    # container stopped early): the client must not take five bytes for ten.
    call = frames_call({**head_frame(200, [("Content-Type", "application/json"), ("Content-Length", "10")]), "run": 1, "body": b"hello"}, (1, END))
    gateway = await start_gateway(RemoteBackend(call, LocalStopSignals()))
    async with http.get(gateway + "/ollama/api/tags") as response:
        assert response.headers["Content-Length"] == "10"
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


async def test_a_remote_body_longer_than_its_content_length_stops_at_it_and_closes(start_gateway):
    # Anything past the declared length would be read as the next response on the
    # client's keep-alive connection.
    extra = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"
    call = frames_call({**head_frame(200, [("Content-Length", "5")]), "run": 1, "body": b"hel"}, (1, b"lo" + extra), (1, END))
    gateway = await start_gateway(RemoteBackend(call, LocalStopSignals()))
    # A keep-alive request: the answer only ends if the gateway closes the connection.
    answer = await raw_exchange(gateway, b"GET /ollama/api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Content-Length: 5" in head and body == b"hello"
