"""The gateway app itself: health, its own errors, methods, body limits."""

from __future__ import annotations

import asyncio
import gzip
import json

import pytest

from backend.cancel import LocalStopSignals
from backend.wire import END, head_frame
from proxy.transport import RemoteBackend
from tests.conftest import raw_exchange


class RecordingBackend(RemoteBackend):
    """A backend that records each call and answers 200 with a fixed body. Its frames
    come from `stream`, as a Modal method's would."""

    def __init__(self) -> None:
        super().__init__(self.stream, LocalStopSignals())
        self.calls: list[dict] = []

    async def stream(self, request):
        self.calls.append(request)
        yield {**head_frame(200, [("Content-Type", "application/json")]), "run": 1}
        yield (1, b"{}")
        yield (1, END)

    async def aclose(self) -> None:
        pass


async def test_health_answers_without_touching_the_backend(start_gateway, http):
    backend = RecordingBackend()
    gateway = await start_gateway(backend)
    for _ in range(3):
        async with http.get(gateway + "/health") as response:
            assert response.status == 200
            body = await response.json()
            assert body["status"] == "ok"
    assert backend.calls == []
    async with http.get(gateway + "/ollama/api/tags") as response:
        assert response.status == 200
    assert len(backend.calls) == 1  # the same backend is reached for /ollama/*


async def test_health_is_instant_even_while_the_backend_hangs(start_gateway, http):
    class HangingBackend(RecordingBackend):
        async def stream(self, request):
            self.calls.append(request)
            await asyncio.Event().wait()
            yield b""

    backend = HangingBackend()
    gateway = await start_gateway(backend)
    hung = asyncio.ensure_future(http.post(gateway + "/ollama/api/chat", json={"model": "m"}))
    await asyncio.sleep(0.1)
    async with http.get(gateway + "/health") as response:
        assert response.status == 200
    assert len(backend.calls) == 1
    hung.cancel()


async def test_unknown_gateway_path_is_json_404(start_gateway, http):
    gateway = await start_gateway(RecordingBackend())
    async with http.get(gateway + "/nope") as response:
        assert response.status == 404
        assert response.content_type == "application/json"
        assert await response.json() == {"error": "not found: Ollama's API is under /ollama/, e.g. /ollama/api/chat"}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        # (GET / is the garden's page: tests/test_dashboard.py)
        ("GET", "/index.html", {"error": "not found: Ollama's API is under /ollama/, e.g. /ollama/api/chat"}),
        ("POST", "/api/chat", {"error": "not found: Ollama's API is under /ollama/, e.g. /ollama/api/chat"}),
        ("GET", "/api/tags", {"error": "not found: Ollama's API is under /ollama/, e.g. /ollama/api/tags"}),
        ("POST", "/v1/chat/completions", {"error": {
            "message": "not found: Ollama's API is under /ollama/, e.g. /ollama/v1/chat/completions",
            "type": "not_found_error", "param": None, "code": None}}),
        ("GET", "/%761/models", {"error": {  # decoded as the router decodes it: /v1/models
            "message": "not found: Ollama's API is under /ollama/, e.g. /ollama/v1/models",
            "type": "not_found_error", "param": None, "code": None}}),
    ],
)  # fmt: skip
async def test_a_request_outside_ollama_gets_a_hint_in_the_callers_shape(start_gateway, http, method, path, body):
    backend = RecordingBackend()
    gateway = await start_gateway(backend)
    async with http.request(method, gateway + path, json={"model": "llama3.2"} if method == "POST" else None) as response:
        assert response.status == 404
        assert await response.json() == body
    assert backend.calls == []


async def test_other_methods_get_json_405_with_allow(start_gateway, http):
    backend = RecordingBackend()
    gateway = await start_gateway(backend)
    for method in ("PUT", "PATCH", "TRACE"):
        async with http.request(method, gateway + "/ollama/api/tags") as response:
            assert response.status == 405
            assert set(response.headers["Allow"].split(",")) == {"GET", "HEAD", "POST", "DELETE", "OPTIONS"}
            assert "error" in await response.json()
    async with http.put(gateway + "/ollama/v1/models") as response:
        assert (await response.json())["error"]["type"] == "invalid_request_error"  # OpenAI's shape on /v1
    assert backend.calls == []


async def test_body_over_the_limit_is_413_json_before_the_backend(start_gateway, http):
    backend = RecordingBackend()
    gateway = await start_gateway(backend, gateway_max_body_mb=1)
    async with http.post(gateway + "/ollama/api/chat", data=b"x" * (1024 * 1024 + 1)) as response:
        assert response.status == 413
        assert "error" in await response.json()
    assert backend.calls == []


async def test_backend_failure_before_the_head_is_502_json(start_gateway, http):
    class BrokenBackend(RecordingBackend):
        async def open(self, request):
            raise RuntimeError("container crashed\nTraceback (most recent call last): ...")

    gateway = await start_gateway(BrokenBackend())
    async with http.post(gateway + "/ollama/api/chat", json={"model": "m"}) as response:
        assert response.status == 502
        body = await response.json()
        assert body == {"error": "the backend failed: RuntimeError"}  # no traceback leaks


async def test_no_first_byte_within_the_timeout_is_504_json(start_gateway, http):
    class SlowBackend(RecordingBackend):
        async def stream(self, request):
            await asyncio.sleep(30)
            yield head_frame(200, [])

    gateway = await start_gateway(SlowBackend(), ollama_timeout=0.2)
    async with http.post(gateway + "/ollama/v1/chat/completions", json={"model": "m"}) as response:
        assert response.status == 504
        error = (await response.json())["error"]
        assert error["type"] == "api_error" and "nothing within" in error["message"]
        assert response.headers["Retry-After"] == "10"


PREFLIGHT = {
    "Origin": "https://chat.example",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os, x-stainless-lang",
}


async def test_preflight_is_answered_without_the_backend_or_a_key(start_gateway, http):
    backend = RecordingBackend()
    gateway = await start_gateway(backend, gateway_api_keys=("k",))
    for path in ("/ollama/api/chat", "/ollama/v1/chat/completions"):
        async with http.options(gateway + path, headers=PREFLIGHT) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] == "https://chat.example"
            allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
            assert {"authorization", "content-type", "x-stainless-os", "x-stainless-lang"} <= allowed
            assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert backend.calls == []  # a preflight never wakes a GPU


async def test_cross_origin_response_carries_cors_headers_even_on_errors(start_gateway, http):
    gateway = await start_gateway(RecordingBackend(), gateway_api_keys=("k",))
    origin = {"Origin": "https://chat.example"}
    async with http.get(gateway + "/ollama/api/tags", headers={**origin, "Authorization": "Bearer k"}) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == "https://chat.example"
    async with http.get(gateway + "/ollama/api/tags", headers=origin) as response:
        assert response.status == 401  # readable by the page, so it can ask for a key
        assert response.headers["Access-Control-Allow-Origin"] == "https://chat.example"


async def test_only_configured_origins_are_allowed(start_gateway, http):
    backend = RecordingBackend()
    gateway = await start_gateway(backend, gateway_cors_origins=("https://mine.example",))
    async with http.options(gateway + "/ollama/api/chat", headers=PREFLIGHT) as response:
        assert response.status == 403
        assert "not allowed" in (await response.json())["error"]
    async with http.options(gateway + "/ollama/api/chat", headers={**PREFLIGHT, "Origin": "https://mine.example"}) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == "https://mine.example"
    assert backend.calls == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/pull"), ("POST", "/api/push"), ("POST", "/api/create"), ("POST", "/api/copy"), ("DELETE", "/api/delete"),
        ("POST", "/api/blobs/sha256:abc"), ("HEAD", "/api/blobs/sha256:abc"),
        # Ollama's account routes, and whatever it adds next: read-only is an allow-list.
        ("POST", "/api/signout"), ("DELETE", "/api/user/keys/abc"), ("POST", "/api/me"), ("POST", "/api/some-future-write"),
        ("PUT", "/api/tags"),
    ],
)  # fmt: skip
async def test_read_only_mode_refuses_everything_but_reading_and_inference(start_gateway, http, method, path):
    backend = RecordingBackend()
    gateway = await start_gateway(backend, gateway_read_only=True)
    async with http.request(method, gateway + "/ollama" + path, json={"model": "m"}) as response:
        assert response.status == 403
        if method != "HEAD":
            assert "error" in await response.json()
    assert backend.calls == []


READ_AND_INFER = [
    ("GET", "/"), ("HEAD", "/"), ("GET", "/api/version"), ("HEAD", "/api/version"), ("GET", "/api/tags"), ("HEAD", "/api/tags"),
    ("GET", "/api/ps"), ("POST", "/api/show"), ("POST", "/api/generate"), ("POST", "/api/chat"), ("POST", "/api/embed"),
    ("POST", "/api/embeddings"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("POST", "/v1/embeddings"),
    ("POST", "/v1/responses"), ("POST", "/v1/messages"), ("GET", "/v1/models"), ("GET", "/v1/models/llama3.2:latest"),
]  # fmt: skip


async def test_read_only_mode_still_serves_reads_and_inference(start_gateway, http):
    backend = RecordingBackend()
    gateway = await start_gateway(backend, gateway_read_only=True)
    for method, path in READ_AND_INFER:
        async with http.request(method, gateway + "/ollama" + path) as response:
            assert response.status == 200, (method, path)
    assert [(call["method"], call["path"]) for call in backend.calls] == READ_AND_INFER


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/api/%70ull"), ("POST", "/api%2Fpull"), ("DELETE", "/api/%64elete"), ("POST", "/api/./copy"), ("POST", "/API/../api/create")],
)
async def test_read_only_mode_sees_through_percent_encoding(start_gateway, http, method, path):
    # Ollama's router matches the decoded path (Go's URL.Path), so must the check.
    backend = RecordingBackend()
    gateway = await start_gateway(backend, gateway_read_only=True)

    answer = await raw_exchange(gateway, f"{method} /ollama{path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}".encode())
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert backend.calls == []


async def test_method_labels_stay_bounded(start_gateway, http):
    gateway = await start_gateway(RecordingBackend())
    for method in ("PROPFIND", "MKCOL", "SEARCH"):
        async with http.request(method, gateway + "/ollama/api/tags") as response:
            assert response.status == 405
    async with http.get(gateway + "/metrics") as response:
        text = await response.text()
    assert 'method="other"' in text and "PROPFIND" not in text and "MKCOL" not in text


# --- Hardening: what an adversarial review found (issue 14) ---------------------------


def raw_request(method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize("path", ["/metrics", "/%6detrics", "/metric%73", "/%6D%65%74%72%69%63%73", "//metrics", "/./metrics", "/x/../metrics"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_metrics_behind_a_key_cannot_be_reached_by_encoding_its_path(start_gateway, method, path):
    gateway = await start_gateway(RecordingBackend(), gateway_api_keys=("k1",))

    answer = await raw_exchange(gateway, raw_request(method, path, {"Connection": "close"}))
    assert status_of(answer) in (401, 404), answer[:200]
    assert b"garden_" not in answer
    keyed = await raw_exchange(gateway, raw_request("GET", path, {"Connection": "close", "X-API-Key": "k1"}))
    assert status_of(keyed) in (200, 404)


async def test_a_keyless_loopback_gateway_checks_host_on_encoded_metrics_paths_too(start_gateway):
    gateway = await start_gateway(RecordingBackend(), loopback_only=True)

    for path in ("/metrics", "/%6detrics"):
        answer = await raw_exchange(gateway, f"GET {path} HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n".encode())
        assert status_of(answer) == 403 and b"garden_" not in answer


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate", "zstd", "GZIP", "gzip, identity"])
async def test_compressed_request_bodies_are_refused_with_415_before_reading(start_gateway, encoding):


    backend = RecordingBackend()
    gateway = await start_gateway(backend, gateway_max_body_mb=1)

    bomb = gzip.compress(b"{" + b" " * 20_000_000 + b"}")  # 20 MB once inflated: 20x the body limit
    for path, family in (("/ollama/api/chat", "ollama"), ("/ollama/v1/chat/completions", "openai")):
        request = raw_request("POST", path, {"Content-Encoding": encoding, "Content-Length": str(len(bomb)), "Connection": "close"}, bomb)
        answer = await raw_exchange(gateway, request)
        assert status_of(answer) == 415, answer[:300]
        error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
        message = error["message"] if family == "openai" else error
        assert "compressed request bodies are not accepted" in message
    assert backend.calls == []


async def test_a_compressed_body_without_a_key_gets_401_not_415(start_gateway):
    gateway = await start_gateway(RecordingBackend(), gateway_api_keys=("k1",))

    answer = await raw_exchange(gateway, raw_request("POST", "/ollama/api/chat", {"Content-Encoding": "gzip", "Content-Length": "2", "Connection": "close"}, b"xx"))
    assert status_of(answer) == 401


async def test_a_declared_length_over_the_limit_is_refused_before_any_body_is_sent(start_gateway):
    backend = RecordingBackend()
    gateway = await start_gateway(backend, gateway_max_body_mb=1)
    host, port = gateway.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    # Only the head: a gateway that read the body first would wait for 100 MB.
    writer.write(raw_request("POST", "/ollama/api/chat", {"Content-Length": str(100 * 1024 * 1024)}))
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    writer.close()
    assert status_of(head) == 413
    assert backend.calls == []


async def test_expect_100_continue_without_a_key_gets_401_and_no_invitation(start_gateway):
    gateway = await start_gateway(RecordingBackend(), gateway_api_keys=("k1",))
    host, port = gateway.removeprefix("http://").split(":")

    async def first_answer(headers: dict[str, str]) -> bytes:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(raw_request("POST", "/ollama/api/chat", {"Expect": "100-continue", "Content-Length": "2", **headers}))
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        finally:
            writer.close()

    assert (await first_answer({})).startswith(b"HTTP/1.1 401 ")
    assert (await first_answer({"Authorization": "Bearer k1", "Content-Encoding": "gzip"})).startswith(b"HTTP/1.1 415 ")
    assert (await first_answer({"Authorization": "Bearer k1"})) == b"HTTP/1.1 100 Continue\r\n\r\n"


async def test_an_unknown_expectation_gets_417_json(start_gateway):
    gateway = await start_gateway(RecordingBackend())

    answer = await raw_exchange(gateway, raw_request("POST", "/ollama/api/chat", {"Expect": "teapot", "Content-Length": "2", "Connection": "close"}, b"{}"))
    assert status_of(answer) == 417 and b'"error"' in answer


async def test_a_trailer_on_a_chunked_request_never_reaches_the_next_request(start_gateway):
    # aiohttp 3.14's C parser gives a chunked body's trailer fields to the next request
    # on the connection as headers: `X-API-Key: k1` in a trailer let a keyless request in.
    backend = RecordingBackend()
    gateway = await start_gateway(backend, gateway_api_keys=("k1",))

    smuggled = (
        b"POST /ollama/api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\n{}\r\n0\r\nX-API-Key: k1\r\n\r\n"
        b"GET /ollama/api/tags HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    answer = await raw_exchange(gateway, smuggled)
    assert answer.count(b"HTTP/1.1 ") == 1 and status_of(answer) == 401  # the first is refused, the second never served
    assert backend.calls == []
    # With a valid key the chunked request is served, and its connection still closes after.
    answer = await raw_exchange(gateway, smuggled.replace(b"chunked\r\n\r\n", b"chunked\r\nX-API-Key: k1\r\n\r\n", 1))
    assert answer.count(b"HTTP/1.1 ") == 1 and status_of(answer) == 200
    assert [call["path"] for call in backend.calls] == ["/api/chat"]


@pytest.mark.parametrize(
    ("first", "extra"),
    [
        (b"POST /ollama/api/chat", b"Expect: teapot\r\n"),  # answered by an Expect handler, before any middleware
        (b"POST /health", b"Expect: teapot\r\n"),
        (b"POST /nothing", b""),
        (b"PUT /ollama/api/chat", b"Expect: 100-continue\r\n"),
        (b"GET /metrics", b""),
    ],
)
async def test_no_answer_to_a_chunked_request_lets_its_trailer_reach_the_next_request(start_gateway, first, extra):
    backend = RecordingBackend()
    gateway = await start_gateway(backend, gateway_api_keys=("k1",))
    smuggled = (
        first + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n" + extra + b"\r\n"
        b"2\r\n{}\r\n0\r\nX-API-Key: k1\r\n\r\n"
        b"GET /ollama/api/tags HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    answer = await raw_exchange(gateway, smuggled)
    assert answer.count(b"HTTP/1.1 ") == 1 or answer.count(b"HTTP/1.") == 1, answer[:300]
    assert backend.calls == []


@pytest.mark.parametrize("request_line", ["POST /nothing", "PUT /ollama/api/chat", "POST /metrics", "POST /health"])
async def test_expect_100_continue_is_never_answered_before_the_key_check(start_gateway, request_line):
    gateway = await start_gateway(RecordingBackend(), gateway_api_keys=("k1",))
    host, port = gateway.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"{request_line} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n".encode())
    await writer.drain()
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    except TimeoutError:
        head = b"(nothing: the client would send its body after its own wait)"
    finally:
        writer.close()
    assert not head.startswith(b"HTTP/1.1 100"), head


async def test_a_refusal_before_the_body_says_the_connection_closes(start_gateway):
    # The answer goes out at once; aiohttp then reads (and drops) what the client still
    # sends for a short while before closing, as nginx's lingering close does, so that the
    # client is not reset before it has read the refusal.
    gateway = await start_gateway(RecordingBackend(), gateway_api_keys=("k1",))
    host, port = gateway.removeprefix("http://").split(":")
    for headers in (b"", b"X-API-Key: k1\r\nContent-Encoding: gzip\r\n"):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /ollama/api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n" + headers + b"\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        writer.close()
        assert status_of(head) in (401, 415) and b"Connection: close" in head


async def test_cors_answers_vary_on_origin(start_gateway, http):
    gateway = await start_gateway(RecordingBackend(), gateway_api_keys=("k",))
    for origin in ("https://a.example", "https://b.example"):
        async with http.get(gateway + "/ollama/api/tags", headers={"Origin": origin, "Authorization": "Bearer k"}) as response:
            assert response.headers["Access-Control-Allow-Origin"] == origin
            assert response.headers["Vary"] == "Origin"
        async with http.options(gateway + "/ollama/api/chat", headers={**PREFLIGHT, "Origin": origin}) as response:
            assert response.headers["Access-Control-Allow-Origin"] == origin
            assert "Origin" in response.headers.getall("Vary")
    async with http.get(gateway + "/ollama/api/tags", headers={"Authorization": "Bearer k"}) as response:
        assert "Vary" not in response.headers  # no Origin, nothing echoed
