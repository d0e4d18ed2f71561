"""backend.relay: the frames the backend yields, against the stand-in Ollama."""

from __future__ import annotations

import json
import pickle
import pickletools

import pytest

from backend.relay import OllamaRelay
from backend.wire import BackendUnavailable, UpstreamBroken, request_frame

CHAT = json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}).encode()


async def collect(relay, request):
    return [frame async for frame in relay.stream(request)]


async def test_frames_are_a_head_then_bytes_and_survive_pickle(standin):
    url, state = standin
    state.token_delay = 0.01  # lines arrive apart, so each is its own chunk
    relay = OllamaRelay(url)
    frames = await collect(relay, request_frame("POST", "/api/chat", [("Content-Type", "application/json")], CHAT))
    await relay.aclose()
    head, chunks = frames[0], frames[1:]
    assert head["status"] == 200 and ("Content-Type", "application/x-ndjson") in head["headers"]
    assert all(type(c) is bytes for c in chunks) and len(chunks) >= 2
    # Only builtin types cross Modal's pickle: no aiohttp/multidict classes needed to load them.
    assert type(head["status"]) is int
    assert all(type(name) is str and type(value) is str for name, value in head["headers"])
    # Exactly what Modal does to each yielded value and to the call argument.
    assert pickle.loads(pickle.dumps(frames)) == frames
    req = request_frame("POST", "/api/chat", [("A", "b")], CHAT)
    assert pickle.loads(pickle.dumps(req)) == req
    globals_needed = [op for op, _, _ in pickletools.genops(pickle.dumps(frames)) if "GLOBAL" in op.name]
    assert globals_needed == []  # no class is referenced: nothing to import on the other side
    for exc in (BackendUnavailable("x"), UpstreamBroken("y")):
        again = pickle.loads(pickle.dumps(exc))
        assert type(again) is type(exc) and str(again) == str(exc)


@pytest.mark.parametrize("path", ["api/tags", "//evil.example/x", "http://evil.example/x"])
def test_relay_refuses_anything_but_an_origin_form_path(path):
    with pytest.raises(ValueError):
        OllamaRelay("http://127.0.0.1:11434").serialize(request_frame("GET", path, [], b""))


def test_relay_request_stays_on_its_own_ollama():
    request = request_frame("GET", "/api/%2e%2e/x?q=%20", [("Host", "evil.example")], b"")
    sent = OllamaRelay("http://127.0.0.1:11434").serialize(request)
    assert sent == b"GET /api/%2e%2e/x?q=%20 HTTP/1.1\r\nHost: 127.0.0.1:11434\r\n\r\n"


async def test_unreachable_ollama_raises_backend_unavailable():
    relay = OllamaRelay("http://127.0.0.1:9")
    with pytest.raises(BackendUnavailable, match="not reachable"):
        await collect(relay, request_frame("GET", "/api/tags", [], b""))
    await relay.aclose()


async def test_ollama_dying_mid_stream_raises_upstream_broken_after_what_was_sent(standin):
    url, state = standin
    state.die_after = 3
    relay = OllamaRelay(url)
    got = []
    with pytest.raises(UpstreamBroken):
        async for frame in relay.stream(request_frame("POST", "/api/chat", [], CHAT)):
            got.append(frame)
    await relay.aclose()
    assert b"".join(got[1:]).count(b"\n") == 3


def test_ollama_sees_its_own_host_including_ipv6_brackets():
    assert OllamaRelay("http://127.0.0.1:11434")._host_header == "127.0.0.1:11434"
    assert OllamaRelay("http://[::1]:11434")._host_header == "[::1]:11434"
