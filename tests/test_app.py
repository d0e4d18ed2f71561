"""The gateway app itself: health, its own errors, methods, body limits."""

from __future__ import annotations

import asyncio

import pytest

from backend.cancel import LocalStopSignals
from backend.wire import head_frame
from proxy.transport import RemoteBackend


class RecordingBackend(RemoteBackend):
    """A backend that records each call and answers 200 with a fixed body. Its frames
    come from `stream`, as a Modal method's would."""

    def __init__(self) -> None:
        super().__init__(self.stream, LocalStopSignals())
        self.calls: list[dict] = []

    async def stream(self, request):
        self.calls.append(request)
        yield head_frame(200, [("Content-Type", "application/json")])
        yield b"{}"

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
        assert await response.json() == {"error": "Not Found"}


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
    [("POST", "/api/pull"), ("POST", "/api/push"), ("POST", "/api/create"), ("POST", "/api/copy"), ("DELETE", "/api/delete"), ("POST", "/api/blobs/sha256:abc")],
)
async def test_read_only_mode_refuses_store_writes(start_gateway, http, method, path):
    backend = RecordingBackend()
    gateway = await start_gateway(backend, gateway_read_only=True)
    async with http.request(method, gateway + "/ollama" + path, json={"model": "m"}) as response:
        assert response.status == 403
        assert "read-only" in (await response.json())["error"]
    assert backend.calls == []


async def test_read_only_mode_still_serves_reads_and_chat(start_gateway, http):
    backend = RecordingBackend()
    gateway = await start_gateway(backend, gateway_read_only=True)
    for method, path in (("GET", "/api/tags"), ("POST", "/api/chat"), ("POST", "/api/show"), ("HEAD", "/api/blobs/sha256:abc"), ("POST", "/v1/chat/completions")):
        async with http.request(method, gateway + "/ollama" + path) as response:
            assert response.status == 200
    assert len(backend.calls) == 5


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/api/%70ull"), ("POST", "/api%2Fpull"), ("DELETE", "/api/%64elete"), ("POST", "/api/./copy"), ("POST", "/API/../api/create")],
)
async def test_read_only_mode_sees_through_percent_encoding(start_gateway, http, method, path):
    # Ollama's router matches the decoded path (Go's URL.Path), so must the check.
    backend = RecordingBackend()
    gateway = await start_gateway(backend, gateway_read_only=True)
    from tests.conftest import raw_exchange

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
