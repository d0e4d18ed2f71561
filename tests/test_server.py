"""proxy.server: the gateway served from a background thread, as app.py does on Modal."""

from __future__ import annotations

import json
import socket
import threading
import urllib.request

import pytest

from config import Settings
from proxy.app import create_app
from proxy.server import serve_in_thread
from proxy.transport import UnavailableBackend
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
