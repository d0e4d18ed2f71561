"""proxy.server: the gateway served from a background thread, as app.py does on Modal."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
import threading
import urllib.request
import weakref

import aiohttp
import pytest

from config import Settings
from proxy.app import create_app
from proxy.server import GC_THRESHOLDS, serve_in_thread, settle_heap
from proxy.transport import UnavailableBackend
from tests.conftest import raw_exchange
from tests.test_ollama_server import free_port


def test_serve_in_thread_returns_once_listening_and_serves_from_its_own_loop():
    port = free_port()
    thread = serve_in_thread(lambda: create_app(UnavailableBackend("none"), Settings(), backend_kind="modal"), "0.0.0.0", port)
    assert thread.is_alive() and thread.daemon and thread is not threading.current_thread()
    # Listening on every interface (Modal polls the container's own address), answering at once.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
        assert json.loads(response.read())["backend"] == "modal"


def test_serve_in_thread_reports_a_port_it_cannot_bind():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"failed to start on 127.0.0.1:{port}"):
            serve_in_thread(lambda: create_app(UnavailableBackend("none"), Settings()), "127.0.0.1", port, ready_timeout=5)


async def test_a_chunked_body_whose_framing_breaks_mid_body_gets_400_and_is_released(standin, gateway, caplog):
    # aiohttp's C parser drops the body it was filling when the framing breaks: the
    # handler reading it waited forever, its connection and buffers held.
    _, state = standin
    host, port = gateway.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /ollama/api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n")
    await writer.drain()
    await asyncio.sleep(0.2)  # the handler is now reading the body
    writer.write(b"5\r\nhelloXX\r\n")  # a chunk longer than it said
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 3)  # and the gateway closes the connection
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ")
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body == {"error": "malformed request body: Expected LF after chunk data"}
    assert answer.count(b"HTTP/1.1 ") == 1
    assert state.seen == []
    async with aiohttp.ClientSession() as session, session.get(gateway + "/metrics") as response:
        assert "garden_streams_in_flight 0.0" in await response.text()
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"GET /x y z HTTP/1.1\r\nHost: x\r\n\r\n", "Bad status line"),
        (b"G@T /ollama/api/tags HTTP/1.1\r\nHost: x\r\n\r\n", "Invalid method encountered"),  # logged at DEBUG by aiohttp
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64, "Received HTTPS traffic on an HTTP port"),
        (b"GET /ollama/api/tags HTTP/1.1\r\nHost: x\r\nX-Api-Key: sk-secret\x01\r\n\r\n", "Invalid header value char"),
        (b"GET /ollama/api/tags HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n", "Invalid character in Content-Length"),
    ],
)
async def test_the_parsers_own_400s_are_json_and_log_one_line_with_the_reason(gateway, caplog, raw, reason):
    caplog.set_level(logging.INFO)  # as deployed: a line aiohttp logs at DEBUG would be lost
    answer = await raw_exchange(gateway, raw)
    assert answer.startswith(b"HTTP/1.0 400 ") and b"Content-Type: application/json" in answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"].startswith(f"malformed request: {reason}")
    lines = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert len(lines) == 1 and reason in lines[0], caplog.text
    assert "sk-secret" not in caplog.text and "sk-secret" not in answer.decode(errors="replace")
    assert "Traceback" not in caplog.text
class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_settled_heap_still_frees_cycles_that_reached_the_oldest_generation():
    # An abandoned stream leaves reference cycles; those of streams still open at a young
    # collection move on to older generations. settle_heap()'s thresholds keep young
    # collections rare, but a full collection must still come on its own, or the RSS grows
    # with every abandoned stream (bench/SOAK.md). Counted in collections, not time.
    threshold = gc.get_threshold()
    collected: list[int] = []

    def watch(phase: str, info: dict) -> None:
        if phase == "stop":
            collected.append(info["generation"])

    try:
        settle_heap()
        assert gc.get_threshold() == GC_THRESHOLDS
        survivors = [_Cycle() for _ in range(1000)]  # alive through collections: they move on
        refs = [weakref.ref(c) for c in survivors]
        gc.callbacks.append(watch)
        for _ in range(30):  # young garbage, 30 young collections' worth at most
            for _ in range(GC_THRESHOLDS[0]):
                _Cycle()
            if survivors is not None and 1 in collected:  # a middle-generation collection moved them to the oldest
                survivors = None
                collected.clear()
            if survivors is None and 2 in collected:
                break
        assert survivors is None, f"no middle-generation collection in 30 young ones: {collected.count(0)} young"
        assert 2 in collected, "no full collection came on its own"
        assert not any(r() for r in refs), "cycles that reached the oldest generation were not freed"
    finally:
        if watch in gc.callbacks:
            gc.callbacks.remove(watch)
        gc.unfreeze()
        gc.set_threshold(*threshold)
