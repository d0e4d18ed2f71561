"""The gateway forwards /ollama/* to Ollama: streaming, bytes, statuses, methods, paths."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from backend.relay import OllamaRelay
from proxy.transport import InProcessBackend
from tests.conftest import raw_exchange, read_request

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "Why is the sky blue?"}]}


async def direct_and_proxied(http, standin_url, gateway_url, method, path, **kwargs):
    """The same request sent straight to the stand-in and through the gateway."""
    results = []
    for url in (standin_url + path, gateway_url + "/ollama" + path):
        async with http.request(method, url, **kwargs) as response:
            results.append((response.status, response.headers, await response.read()))
    return results


async def test_stream_arrives_line_by_line_while_upstream_waits_for_the_client(standin, gateway, http):
    # The stand-in sends line i+1 only after the test has received line i through the
    # gateway. A proxy that buffered anything would deadlock here (and time out).
    _, state = standin
    state.gate = asyncio.Queue()
    received = []
    async with http.post(gateway + "/ollama/api/chat", json=CHAT) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/x-ndjson"
        while True:
            line = await asyncio.wait_for(response.content.readline(), timeout=5)
            if not line:
                break
            received.append(json.loads(line))
            state.gate.put_nowait(True)
    assert [m["done"] for m in received] == [False] * 8 + [True]
    assert "".join(m["message"]["content"] for m in received).startswith("The sky is blue")
    assert received[-1]["done_reason"] == "stop" and received[-1]["eval_count"] == 8


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/chat", CHAT),  # NDJSON stream (the default)
        ("POST", "/api/generate", {"model": "llama3.2", "prompt": "hi"}),
        ("POST", "/api/chat", {**CHAT, "stream": False}),  # one JSON object
        ("POST", "/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}}),  # SSE
        ("POST", "/v1/chat/completions", CHAT),
        ("GET", "/api/tags", None),
        ("GET", "/v1/models", None),
        ("POST", "/api/embed", {"model": "llama3.2", "input": ["a", "bc"]}),
        ("GET", "/", None),
    ],
)
async def test_bodies_and_content_types_are_identical_to_going_direct(standin, gateway, http, method, path, body):
    url, _ = standin
    (s1, h1, b1), (s2, h2, b2) = await direct_and_proxied(http, url, gateway, method, path, json=body)
    assert b2 == b1 and len(b1) > 0
    assert s2 == s1 == 200
    assert h2["Content-Type"] == h1["Content-Type"]


async def test_sse_stream_ends_with_done_and_is_byte_identical(standin, gateway, http):
    url, _ = standin
    body = {**CHAT, "stream": True}
    (_, _, direct), (_, headers, proxied) = await direct_and_proxied(http, url, gateway, "POST", "/v1/chat/completions", json=body)
    assert headers["Content-Type"] == "text/event-stream"
    assert proxied == direct
    assert proxied.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/api/chat", {"model": "no-such-model", "messages": []}, 404),
        ("POST", "/api/chat", {"messages": []}, 400),
        ("POST", "/api/generate", b"{not json", 400),
        ("GET", "/api/chat", None, 405),  # known path, wrong method
        ("GET", "/api/nothing-here", None, 404),
        ("POST", "/v1/chat/completions", {"model": "no-such-model", "messages": []}, 404),
        ("DELETE", "/api/delete", {"model": "no-such-model"}, 404),
    ],
)
async def test_statuses_and_error_bodies_pass_through_unchanged(standin, gateway, http, method, path, body, status):
    url, _ = standin
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    (s1, _, b1), (s2, _, b2) = await direct_and_proxied(http, url, gateway, method, path, **kwargs)
    assert s1 == s2 == status
    assert b2 == b1


async def test_delete_body_reaches_ollama(standin, gateway, http):
    _, state = standin
    async with http.delete(gateway + "/ollama/api/delete", json={"model": "llama3.2"}) as response:
        assert response.status == 200
        assert await response.read() == b""
    seen = state.seen[-1]
    assert (seen.method, seen.path) == ("DELETE", "/api/delete")
    assert json.loads(seen.body) == {"model": "llama3.2"}
    assert "llama3.2:latest" not in state.models


@pytest.mark.parametrize("path", ["/", "/api/version", "/api/tags"])
async def test_head_returns_headers_and_no_body(standin, gateway, http, path):
    url, state = standin
    async with http.head(url + path) as direct:
        declared = direct.headers["Content-Length"]  # the length a GET would have
    async with http.head(gateway + "/ollama" + path) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == declared
        assert await response.read() == b""
    assert (state.seen[-1].method, state.seen[-1].path) == ("HEAD", path)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("POST", "/api/chat", {**CHAT, "stream": False}), ("GET", "/api/tags", None), ("POST", "/api/show", {"model": "llama3.2"})],
)
async def test_a_body_of_declared_length_keeps_its_length(standin, gateway, http, method, path, body):
    url, _ = standin
    (_, direct_headers, direct), (status, headers, proxied) = await direct_and_proxied(http, url, gateway, method, path, json=body)
    assert status == 200 and proxied == direct
    assert headers["Content-Length"] == direct_headers["Content-Length"] == str(len(proxied))
    assert "Transfer-Encoding" not in headers


@pytest.mark.parametrize(
    ("answer", "received"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n" + b'{"models": [', b'{"models": ['),
        (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nc\r\n" + b'{"models": [\r\n', b'{"models": ['),
        # NDJSON could take an error line, but not past the length it declared
        (b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/x-ndjson\r\nContent-Length: 40\r\n\r\n" + b'{"a":1}\n', b'{"a":1}\n'),
    ],
    ids=["json-content-length", "json-chunked", "ndjson-content-length"],
)
async def test_a_body_cut_short_upstream_reaches_the_client_as_incomplete(raw_upstream, start_gateway, http, answer, received):
    # Where no error can be said in band, the client must see that the body is
    # incomplete, not a clean end after half an answer.
    async def handler(reader, writer, _):
        await read_request(reader)
        writer.write(answer)
        await writer.drain()  # then the connection closes: Ollama died mid-body

    url, _ = await raw_upstream(handler)
    gateway = await start_gateway(InProcessBackend(OllamaRelay(url)))
    async with http.get(gateway + "/ollama/api/tags") as response:
        got = bytearray()
        with pytest.raises(aiohttp.ClientPayloadError):
            async for piece in response.content.iter_any():
                got += piece
    assert bytes(got) == received
    async with http.get(gateway + "/health") as response:  # the gateway carries on
        assert response.status == 200


@pytest.mark.parametrize(
    ("gateway_path", "upstream_path"),
    [
        ("/ollama", "/"),
        ("/ollama/", "/"),
        ("/ollama/api/tags?verbose=1&x=%20y", "/api/tags?verbose=1&x=%20y"),
        ("/ollama//evil.example/api/tags", "/evil.example/api/tags"),
        ("/ollama/api/../api/tags", "/api/tags"),
        ("/ollama/api/%2e%2e/api/tags", "/api/%2e%2e/api/tags"),
        ("/ollama/http://evil.example/api/tags", "/http:/evil.example/api/tags"),
    ],
)
async def test_paths_land_on_the_backends_own_ollama(standin, gateway, gateway_path, upstream_path):
    url, state = standin
    # Raw socket: HTTP clients would normalise these paths before sending.
    host, port = url.removeprefix("http://").split(":")
    gw_host, gw_port = gateway.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(gw_host, int(gw_port))
    writer.write(f"GET {gateway_path} HTTP/1.1\r\nHost: public.example\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 ")
    assert state.seen[-1].path == upstream_path
    # Ollama saw its own address as Host, never the public one.
    assert state.seen[-1].headers["Host"] == f"{host}:{port}"


async def test_paths_outside_the_prefix_are_not_forwarded(standin, gateway, http):
    _, state = standin
    async with http.get(gateway + "/ollamax/api/tags") as response:
        assert response.status == 404
        assert await response.json() == {"error": "not found: Ollama's API is under /ollama/, e.g. /ollama/api/chat"}
    assert state.seen == []


async def test_request_headers_are_forwarded_except_hop_by_hop_host_and_origin(standin, start_gateway, http):
    url, state = standin
    gateway = await start_gateway(InProcessBackend(OllamaRelay(url)), gateway_cors_origins=("https://chat.example",))
    headers = {
        "X-Custom": "kept",
        "User-Agent": "ollama-python/0.6.3",
        "Connection": "keep-alive, X-Drop-Me",
        "X-Drop-Me": "hop-by-hop via Connection",
        "Keep-Alive": "timeout=5",
        "Origin": "https://chat.example",
        "Authorization": "Bearer secret",
    }
    async with http.post(gateway + "/ollama/api/chat", json={**CHAT, "stream": False}, headers=headers) as response:
        assert response.status == 200  # Ollama would answer 403 to the forwarded Origin
    seen = {k.lower(): v for k, v in state.seen[-1].headers.items()}
    assert seen["x-custom"] == "kept" and seen["user-agent"] == "ollama-python/0.6.3"
    for name in ("x-drop-me", "keep-alive", "origin", "authorization"):
        assert name not in seen


async def test_response_headers_come_back_without_hop_by_hop(standin, gateway, http):
    async with http.post(gateway + "/ollama/api/chat", json=CHAT) as response:
        await response.read()
        assert response.headers["Transfer-Encoding"] == "chunked"  # framed by the gateway itself
        assert "Content-Length" not in response.headers
        assert response.headers["X-Accel-Buffering"] == "no"


async def test_large_request_body_reaches_ollama_intact(standin, gateway, http):
    _, state = standin
    image = "A" * (5 * 1024 * 1024)  # a chat image, base64
    body = {**CHAT, "stream": False, "messages": [{"role": "user", "content": "?", "images": [image]}]}
    async with http.post(gateway + "/ollama/api/chat", json=body) as response:
        assert response.status == 200
    assert json.loads(state.seen[-1].body)["messages"][0]["images"][0] == image


async def test_one_upstream_pool_serves_many_requests(standin, start_gateway, http):
    url, state = standin
    relay = OllamaRelay(url)
    gateway = await start_gateway(InProcessBackend(relay))
    results = await asyncio.gather(*(http.get(gateway + "/ollama/api/tags") for _ in range(20)))
    assert {r.status for r in results} == {200}
    concurrent = {seen.peer for seen in state.seen}
    for _ in range(5):
        async with http.post(gateway + "/ollama/api/chat", json=CHAT) as response:
            assert response.status == 200
            await response.read()
    later = [seen.peer for seen in state.seen[20:]]
    # Keep-alive connections are reused, one after another, from the pool the first
    # requests filled: no new connection (and no new pool) per request.
    assert len(set(later)) == 1 and set(later) <= concurrent
    assert relay.connections_in_use == 0


async def test_a_client_that_reads_slowly_holds_ollama_back_and_gets_every_byte(raw_upstream, start_gateway):
    piece = bytes(range(256)) * 256  # 64 KiB
    count = 1024  # 64 MiB: more than every socket buffer on the way can hold
    written = 0

    async def handler(reader, writer, _):
        nonlocal written
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(count):
            writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            await writer.drain()  # blocks while nobody downstream reads
            written += len(piece)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    url, _ = await raw_upstream(handler)
    gateway = await start_gateway(InProcessBackend(OllamaRelay(url)))
    host, port = gateway.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /ollama/api/blobs/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    await asyncio.sleep(0.5)  # the client reads nothing: buffers fill up, then everything waits
    stalled_at = written
    await asyncio.sleep(0.5)
    assert written == stalled_at < count * len(piece)  # Ollama is held back, not buffered by the gateway
    body = await reader.read()  # the client reads: everything arrives, in order
    writer.close()
    assert b"".join(_dechunk(body)) == piece * count


def _dechunk(body: bytes):
    at = 0
    while True:
        line_end = body.index(b"\r\n", at)
        size = int(body[at:line_end], 16)
        if size == 0:
            return
        yield body[line_end + 2 : line_end + 2 + size]
        at = line_end + 2 + size + 2


async def test_gateway_forwards_to_unreachable_ollama_as_503_json(start_gateway, http):
    gateway = await start_gateway(InProcessBackend(OllamaRelay("http://127.0.0.1:9")))
    async with http.post(gateway + "/ollama/api/chat", json=CHAT) as response:
        assert response.status == 503
        assert response.content_type == "application/json"
        assert "not reachable" in (await response.json())["error"]
    async with http.post(gateway + "/ollama/v1/chat/completions", json=CHAT) as response:
        assert response.status == 503
        error = (await response.json())["error"]
        assert error["type"] == "api_error" and "not reachable" in error["message"]


async def test_ollama_dying_mid_stream_ends_ndjson_with_an_error_line(standin, gateway, http):
    _, state = standin
    state.die_after, state.token_delay = 3, 0.01
    async with http.post(gateway + "/ollama/api/chat", json=CHAT) as response:
        assert response.status == 200
        body = await asyncio.wait_for(response.read(), 5)
    lines = [json.loads(line) for line in body.splitlines()]
    assert [line.get("done") for line in lines[:3]] == [False] * 3
    assert set(lines[3]) == {"error"} and "ended early" in lines[3]["error"]
    assert len(lines) == 4


async def test_ollama_dying_mid_stream_ends_sse_with_an_error_event(standin, gateway, http):
    _, state = standin
    state.die_after, state.token_delay = 2, 0.01
    async with http.post(gateway + "/ollama/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        body = await asyncio.wait_for(response.read(), 5)
    events = body.decode().split("\n\n")
    assert events[-1] == ""
    assert all(e.startswith("data: {") for e in events[:-1])
    last = json.loads(events[-2].removeprefix("data: "))
    assert last["error"]["type"] == "api_error" and "ended early" in last["error"]["message"]
    assert len(events) == 4


BAD_REQUESTS = [
    b"GET /ollama/api/tags HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",  # oversized header
    b"GET /ollama/api/tags HTTP/1.1\r\nHost: x\r\nBroken header line\r\n\r\n",  # malformed header
    b"GET /ollama/api/tags HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",  # bad framing
    b"G@T /ollama/api/tags HTTP/1.1\r\nHost: x\r\n\r\n",  # not a method token
    b"GET /ollama/" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # oversized request line
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # TLS hello on a plain port
]


async def test_bad_input_is_refused_and_leaves_the_gateway_working(standin, gateway, http, caplog):
    _, state = standin
    for raw in BAD_REQUESTS:
        answer = await raw_exchange(gateway, raw)
        status = answer.split(b" ", 2)[1]
        assert answer.startswith(b"HTTP/1.") and status.startswith(b"4"), answer[:80]
        assert b"Traceback" not in answer
    assert state.seen == []  # none of it reached Ollama
    assert "Traceback" not in caplog.text
    # Bad JSON and unknown models do reach Ollama, and its own errors come back.
    for body, status in ((b"{oops", 400), (b'{"model": "ghost"}', 404), (b'{"messages": []}', 400), (b"", 400)):
        async with http.post(gateway + "/ollama/api/chat", data=body) as response:
            assert response.status == status
            assert set(await response.json()) == {"error"}
    # Path tricks stay on this Ollama.
    for path in ("/ollama/../../../etc/passwd", "/ollama//169.254.169.254/latest", "/ollama/%2e%2e/%2e%2e/x"):
        async with http.get(gateway + path) as response:
            assert response.status in (404, 405)
    # And a normal stream still works, whole.
    async with http.post(gateway + "/ollama/api/chat", json=CHAT) as response:
        lines = (await response.read()).splitlines()
    assert response.status == 200 and json.loads(lines[-1])["done"] is True and len(lines) == 9


async def test_300_concurrent_streams_complete_byte_identical(standin, gateway):
    url, state = standin
    state.token_delay = 0.02  # all 300 are open at the same time
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post(url + "/api/chat", json=CHAT) as response:
            expected = await response.read()

        async def one() -> bytes:
            async with session.post(gateway + "/ollama/api/chat", json=CHAT) as response:
                assert response.status == 200
                return await response.read()

        bodies = await asyncio.gather(*(one() for _ in range(300)))
    assert all(body == expected for body in bodies)
    assert state.streams_finished == 301 and state.streams_cancelled == 0


async def test_deeply_nested_or_undecodable_json_is_ollamas_to_answer_never_a_gateway_500(standin, gateway, http, caplog):
    _, state = standin
    for body in (b"[" * 60_000, b'{"model": ' * 20_000, b"\xff\xfe\x00{", b'{"model": "\xc3\x28"}', b"\x00" * 100):
        async with http.post(gateway + "/ollama/api/chat", data=body, headers={"Content-Type": "application/json"}) as response:
            assert response.status == 400, body[:20]  # the stand-in's own answer, as Ollama's would be
            assert set(await response.json()) == {"error"}
    assert len(state.seen) == 5
    assert "Traceback" not in caplog.text


async def test_a_body_dripped_slower_than_the_body_timeout_gets_408_and_is_released(standin, start_gateway):
    url, state = standin
    gateway = await start_gateway(InProcessBackend(OllamaRelay(url)), gateway_body_timeout_s=1)
    host, port = gateway.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /ollama/api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
    await writer.drain()

    async def drip():  # a byte every 0.3 s: an idle timeout would never fire
        for _ in range(20):
            await asyncio.sleep(0.3)
            writer.write(b" ")
            await writer.drain()

    dripping = asyncio.ensure_future(drip())
    try:
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        dripping.cancel()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"error": "the request body did not arrive within 1s"}
    assert state.seen == []
