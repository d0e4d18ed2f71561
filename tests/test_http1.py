"""backend.http1 and the relay's pool, against raw upstreams that send exact bytes.

The stand-in Ollama (aiohttp) always answers well-formed, so the edges of HTTP/1.1
that a relay must survive are played here by hand: interim responses, bodies that run
until close, malformed heads, a keep-alive connection dropped as it is reused, and a
consumer slower than the upstream.
"""

from __future__ import annotations

import asyncio

import pytest

from backend.http1 import BUFFER_LIMIT
from backend.relay import OllamaRelay, serialize_request
from backend.wire import BackendUnavailable, UpstreamBroken, request_frame
from proxy.transport import InProcessBackend
from tests.conftest import read_request

def canned(response: bytes):
    """An upstream handler: answer the connection's first request with `response`, then wait."""

    async def handler(reader, writer, _):
        await read_request(reader)
        writer.write(response)
        await reader.read()

    return handler


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


class Collect:
    """A BodySink that keeps what it is given."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, chunk: bytes) -> bool:
        self.chunks.append(chunk)
        return True

    async def drain(self) -> None:
        return None


async def fetch(relay: OllamaRelay, method: str = "GET", path: str = "/api/tags", body: bytes = b"") -> tuple[int, bytes]:
    response = await relay.open(request_frame(method, path, [], body))
    sink = Collect()
    try:
        await response.send_body(sink)
    finally:
        await response.aclose()
    return response.status, b"".join(sink.chunks)


async def test_request_bytes_are_exactly_what_ollama_should_see(raw_upstream):
    async def handler(reader, writer, _):
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        await reader.read()

    url, seen = await raw_upstream(handler)
    relay = OllamaRelay(url)
    port = url.rsplit(":", 1)[1]
    response = await relay.open(request_frame("POST", "/api/chat?x=%20", [("Host", "evil.example"), ("X-Keep", "1")], b'{"a":1}'))
    await response.send_body(Collect())
    await response.aclose()
    assert await fetch(relay, "POST", "/api/pull") == (200, b"{}")  # the same connection, reused
    await relay.aclose()
    assert seen[0] == (
        f"POST /api/chat?x=%20 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Keep: 1\r\nContent-Length: 7\r\n\r\n".encode() + b'{"a":1}'
    )
    # An empty POST still says its length, as Ollama's Go server expects of a body.
    assert seen[1] == f"POST /api/pull HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n".encode()


@pytest.mark.parametrize(
    "headers",
    [[("X-Evil", "a\r\nInjected: 1")], [("X-Evil\r\nInjected", "1")], [("Bad:Name", "1")]],
)
def test_serialize_refuses_header_splitting(headers):
    with pytest.raises(ValueError):
        serialize_request("GET", "/api/tags", "127.0.0.1:11434", headers, b"")


@pytest.mark.parametrize("target", ["/api/tags HTTP/1.1\r\nX: y", "/a b"])
def test_serialize_refuses_a_broken_request_line(target):
    with pytest.raises(ValueError):
        serialize_request("GET", target, "127.0.0.1:11434", [], b"")


async def test_interim_100_response_is_skipped(raw_upstream):
    url, _ = await raw_upstream(canned(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nyes"))
    relay = OllamaRelay(url)
    assert await fetch(relay, "POST", "/api/create", b"{}") == (201, b"yes")
    await relay.aclose()


async def test_body_without_length_runs_until_close_and_is_complete(raw_upstream):
    async def handler(reader, writer, _):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"it")

    url, _ = await raw_upstream(handler)
    relay = OllamaRelay(url)
    assert await fetch(relay) == (200, b"all of it")
    assert relay.connections_in_use == 0
    await relay.aclose()


async def test_chunked_body_cut_off_raises_upstream_broken_after_what_arrived(raw_upstream):
    async def handler(reader, writer, _):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"one\n")[:-5])
        await writer.drain()

    url, _ = await raw_upstream(handler)
    relay = OllamaRelay(url)
    response = await relay.open(request_frame("POST", "/api/chat", [], b"{}"))
    sink = Collect()
    with pytest.raises(UpstreamBroken):
        await response.send_body(sink)
    await response.aclose()
    assert sink.chunks == [b"one\n"]
    await relay.aclose()


async def test_malformed_head_is_upstream_broken_and_a_json_502(raw_upstream, start_gateway, http):
    url, _ = await raw_upstream(canned(b"SMTP ready\r\n\r\n"))
    relay = OllamaRelay(url)
    with pytest.raises(UpstreamBroken, match="malformed"):
        await relay.open(request_frame("GET", "/api/tags", [], b""))
    assert relay.connections_in_use == 0
    await relay.aclose()
    gateway = await start_gateway(InProcessBackend(OllamaRelay(url)))
    async with http.get(gateway + "/ollama/api/tags") as response:
        assert response.status == 502
        assert "malformed" in (await response.json())["error"]


async def test_a_response_nobody_asked_for_is_not_passed_on_and_the_connection_is_dropped(raw_upstream):
    async def handler(reader, writer, number):
        await read_request(reader)
        # One answer, then a second one in the same packet: the second has no request.
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
        await writer.drain()
        if number == 1:
            await reader.read()
            return
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n#%d" % number)
        await reader.read()

    url, _ = await raw_upstream(handler)
    relay = OllamaRelay(url)
    assert await fetch(relay) == (200, b"ok")
    status, body = await fetch(relay)
    assert status == 200 and b"evil" not in body  # never reaches a client: a new connection answered
    await relay.aclose()


async def test_trailers_do_not_become_response_headers(raw_upstream):
    url, _ = await raw_upstream(canned(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Head: 1\r\n\r\n2\r\nok\r\n0\r\nX-Trailer: 2\r\n\r\n"))
    relay = OllamaRelay(url)
    response = await relay.open(request_frame("GET", "/api/tags", [], b""))
    await response.send_body(Collect())
    await response.aclose()
    assert [name for name, _ in response.headers] == ["Transfer-Encoding", "X-Head"]
    await relay.aclose()


async def test_head_answer_ends_at_its_headers_and_the_next_request_works(raw_upstream):
    async def handler(reader, writer, number):
        request = await read_request(reader)
        if request.startswith(b"HEAD"):
            # Go announces the length the GET would have; no body follows.
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\nOllama is running")
        await writer.drain()
        await reader.read()

    url, _ = await raw_upstream(handler)
    relay = OllamaRelay(url)
    assert await asyncio.wait_for(fetch(relay, "HEAD", "/"), 5) == (200, b"")
    assert await fetch(relay, "GET", "/") == (200, b"Ollama is running")
    await relay.aclose()


async def test_keep_alive_connection_dropped_as_it_is_reused_is_retried_once(raw_upstream):
    async def handler(reader, writer, number):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d" % number)
        await writer.drain()
        if number == 1:
            await read_request(reader)  # the reuse arrives, and the connection just closes
            return
        await reader.read()

    url, _ = await raw_upstream(handler)
    relay = OllamaRelay(url)
    assert await fetch(relay) == (200, b"1")
    assert await fetch(relay) == (200, b"2")  # answered on a fresh connection
    await relay.aclose()


async def test_fresh_connection_closed_without_answer_is_backend_unavailable(raw_upstream):
    async def handler(reader, writer, _):
        await read_request(reader)  # then close: no retry on a fresh connection

    url, _ = await raw_upstream(handler)
    relay = OllamaRelay(url)
    with pytest.raises(BackendUnavailable, match="without answering"):
        await relay.open(request_frame("POST", "/api/chat", [], b"{}"))
    await relay.aclose()


async def test_a_post_is_never_sent_twice_even_on_a_reused_connection(raw_upstream):
    async def handler(reader, writer, number):
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        seen.append(await read_request(reader))  # then close: did Ollama start the work? Unknown.

    url, seen = await raw_upstream(handler)
    relay = OllamaRelay(url)
    assert await fetch(relay, "POST", "/api/show", b"{}") == (200, b"{}")
    with pytest.raises(BackendUnavailable, match="without answering"):
        await fetch(relay, "POST", "/api/pull", b"{}")
    assert [r.split(b" ")[1] for r in seen] == [b"/api/show", b"/api/pull"]  # /api/pull went out once
    await relay.aclose()


class SlowSink:
    """A BodySink whose reader is stuck until `release` is set."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.release = asyncio.Event()
        self.drains = 0

    def write(self, chunk: bytes) -> bool:
        self.chunks.append(chunk)
        return self.release.is_set()

    async def drain(self) -> None:
        self.drains += 1
        await self.release.wait()


async def test_a_slow_sink_pauses_reading_from_ollama_and_loses_nothing(raw_upstream):
    piece = bytes(range(256)) * 64  # 16 KiB
    total = 4 * 1024 * 1024
    go = asyncio.Event()

    async def handler(reader, writer, _):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        await go.wait()  # the body starts once the sink is attached: chunks are pushed
        for _ in range(total // len(piece)):
            writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            await writer.drain()  # blocks while the relay does not read
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    url, _ = await raw_upstream(handler)
    relay = OllamaRelay(url)
    response = await relay.open(request_frame("POST", "/api/pull", [], b"{}"))
    sink = SlowSink()
    sending = asyncio.ensure_future(response.send_body(sink))
    await asyncio.sleep(0.05)
    go.set()
    await asyncio.sleep(0.3)
    connection = response._connection
    assert not connection.transport.is_reading()  # Ollama is held back, not buffered
    held = sum(map(len, sink.chunks))
    assert held < total // 4  # a bounded amount got through before the pause
    sink.release.set()
    await asyncio.wait_for(sending, 10)
    await response.aclose()
    assert b"".join(sink.chunks) == piece * (total // len(piece))
    assert sink.drains >= 1
    await relay.aclose()


async def test_pulling_the_body_pauses_ollama_while_chunks_wait(raw_upstream):
    piece = b"x" * 16384
    count = 64

    async def handler(reader, writer, _):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(count):
            writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    url, _ = await raw_upstream(handler)
    relay = OllamaRelay(url)
    frames = relay.stream(request_frame("POST", "/api/pull", [], b"{}"))
    head = await anext(frames)
    assert head["status"] == 200
    await asyncio.sleep(0.3)  # nobody reads: the relay buffers at most about BUFFER_LIMIT
    connection = next(iter(relay._busy))
    assert not connection.transport.is_reading()
    assert connection._pending_size < BUFFER_LIMIT + 256 * 1024  # one socket read past the limit at most
    body = b"".join([chunk async for chunk in frames])
    assert body == piece * count
    assert relay.connections_in_use == 0
    await relay.aclose()
