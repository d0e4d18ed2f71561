"""backend.ollama_server: starting Ollama, pulling and preloading models."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import pytest

from backend import ollama_server
from backend.ollama_server import OllamaServer, OllamaStartError
from tests.fake_ollama import write_fake_ollama


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("name", "canonical"), [("llama3.2", "llama3.2:latest"), ("glm-4.7-flash:q8_0", "glm-4.7-flash:q8_0"), ("host:5000/ns/m", "host:5000/ns/m:latest")])
def test_canonical_model(name, canonical):
    assert ollama_server.canonical_model(name) == canonical


async def test_pull_missing_pulls_only_what_is_absent_and_logs_progress(standin, caplog):
    url, state = standin
    caplog.set_level(logging.INFO, "backend.ollama_server")
    pulled, failed = await asyncio.to_thread(ollama_server.pull_missing, url, ("llama3.2", "qwen3:0.6b"))
    assert (pulled, failed) == (["qwen3:0.6b"], [])
    pulls = [json.loads(s.body)["model"] for s in state.seen if s.path == "/api/pull"]
    assert pulls == ["qwen3:0.6b"]
    text = caplog.text
    assert "llama3.2 already on the volume" in text
    assert "100% of 4.0 MB" in text and "pull qwen3:0.6b: success" in text


async def test_a_failed_pull_is_logged_and_the_rest_still_pulled(standin, caplog):
    url, state = standin
    state.fail_pull = {"broken:1b"}
    pulled, failed = await asyncio.to_thread(ollama_server.pull_missing, url, ("broken:1b", "qwen3:0.6b"))
    assert (pulled, failed) == (["qwen3:0.6b"], ["broken:1b"])
    assert any(r.levelno == logging.ERROR and "broken:1b failed to pull" in r.getMessage() for r in caplog.records)


def test_pull_progress_is_throttled(monkeypatch, caplog):
    caplog.set_level(logging.INFO, "backend.ollama_server")
    events = [{"status": "pulling abc", "total": 100, "completed": c} for c in range(0, 101)]
    monkeypatch.setattr(ollama_server, "_post_lines", lambda *a, **k: iter(events))
    ticks = iter(range(0, 1000))  # one "second" per event
    ollama_server.pull("http://x", "m", log_every=25.0, clock=lambda: next(ticks))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["pull m: pulling abc 0% of 100 B", "pull m: pulling abc 25% of 100 B", "pull m: pulling abc 50% of 100 B", "pull m: pulling abc 75% of 100 B", "pull m: pulling abc 100% of 100 B"]


async def test_preload_sends_an_empty_generate_that_keeps_the_model_loaded(standin):
    url, state = standin
    await asyncio.to_thread(ollama_server.preload, url, "llama3.2")
    seen = state.seen[-1]
    assert seen.path == "/api/generate" and json.loads(seen.body) == {"model": "llama3.2", "keep_alive": -1}


def test_server_starts_answers_and_stops(tmp_path):
    binary = write_fake_ollama(tmp_path / "bin")
    server = OllamaServer(f"http://127.0.0.1:{free_port()}", binary=str(binary))
    server.start()
    try:
        assert server.wait_ready(20) < 20
        assert ollama_server.is_up(server.base_url)
    finally:
        server.stop()
    assert server.process.returncode is not None
    assert not ollama_server.is_up(server.base_url)


def test_server_that_exits_fails_with_a_clear_message(tmp_path):
    server = OllamaServer(f"http://127.0.0.1:{free_port()}", binary=str(write_fake_ollama(tmp_path / "bin", "exit")))
    server.start()
    with pytest.raises(OllamaStartError, match="exited with code 3 before answering"):
        server.wait_ready(20)


def test_server_that_never_answers_fails_at_the_deadline(tmp_path):
    server = OllamaServer(f"http://127.0.0.1:{free_port()}", binary=str(write_fake_ollama(tmp_path / "bin", "hang")))
    server.start()
    try:
        with pytest.raises(OllamaStartError, match=r"did not answer at .* within 1s"):
            server.wait_ready(1.0)
    finally:
        server.stop(grace=1)
