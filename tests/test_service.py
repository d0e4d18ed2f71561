"""backend.service: the GPU container's lifecycle, without Modal."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from backend.service import OllamaService, changes_model_store
from backend.wire import request_frame
from tests.fake_ollama import AlreadyRunning


@pytest.mark.parametrize(
    ("method", "path", "status", "changes"),
    [
        ("POST", "/api/pull", 200, True),
        ("DELETE", "/api/delete", 200, True),
        ("POST", "/api/copy", 200, True),
        ("POST", "/api/create?x=1", 200, True),
        ("POST", "/api/pull", 500, False),
        ("DELETE", "/api/delete", 404, False),
        ("POST", "/api/chat", 200, False),
        ("GET", "/api/pull", 200, False),
    ],
)
def test_changes_model_store(method, path, status, changes):
    assert changes_model_store(method, path, status) is changes


async def test_start_pulls_missing_models_commits_once_and_preloads_the_first(standin, caplog):
    url, state = standin
    caplog.set_level(logging.INFO)
    commits = []
    server = AlreadyRunning()
    service = OllamaService(url, ("qwen3:0.6b", "llama3.2"), commit=lambda: commits.append(1), server=server)
    await asyncio.to_thread(service.start)
    assert server.started and len(commits) == 1
    paths = [(s.path, json.loads(s.body or b"{}").get("model")) for s in state.seen if s.method == "POST"]
    assert paths == [("/api/pull", "qwen3:0.6b"), ("/api/generate", "qwen3:0.6b")]
    assert "ollama answered after" in caplog.text
    assert "volume committed (qwen3:0.6b)" in caplog.text and "model qwen3:0.6b loaded in" in caplog.text
    service.stop()
    assert server.stopped


async def test_start_with_everything_present_does_not_commit(standin):
    url, _ = standin
    commits = []
    service = OllamaService(url, ("llama3.2",), commit=lambda: commits.append(1), server=AlreadyRunning())
    await asyncio.to_thread(service.start)
    assert commits == []


async def test_start_survives_a_failed_pull_and_preloads_what_it_has(standin, caplog):
    url, state = standin
    state.fail_pull = {"broken:1b"}
    service = OllamaService(url, ("broken:1b", "llama3.2"), commit=lambda: None, server=AlreadyRunning())
    await asyncio.to_thread(service.start)
    assert json.loads(state.seen[-1].body)["model"] == "llama3.2"
    assert "broken:1b failed to pull" in caplog.text


async def test_proxy_commits_after_a_store_change_only(standin):
    url, _ = standin
    commits = []
    service = OllamaService(url, (), commit=lambda: commits.append(1), server=AlreadyRunning())

    async def run(method, path, body):
        return [f async for f in service.proxy(request_frame(method, path, [], json.dumps(body).encode()))]

    async def settled_run(method, path, body):
        frames = await run(method, path, body)
        await service.settle()
        return frames

    await settled_run("POST", "/api/chat", {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]})
    assert commits == []
    await settled_run("POST", "/api/pull", {"model": "qwen3:0.6b"})
    assert commits == [1]
    await settled_run("DELETE", "/api/delete", {"model": "qwen3:0.6b"})
    assert commits == [1, 1]
    await settled_run("DELETE", "/api/delete", {"model": "qwen3:0.6b"})  # 404: nothing changed
    assert commits == [1, 1]
    await service.relay.aclose()


async def test_the_response_ends_before_the_commit_and_commits_run_one_at_a_time(standin):
    # On Modal a client's stream ends only when the generator returns: a commit (which
    # Modal may retry for minutes) must not hold it open.
    import threading

    url, _ = standin
    release, running, commits = threading.Event(), [], []

    def slow_commit():
        running.append(1)
        assert len(running) == 1, "two commits at once"
        release.wait(10)
        commits.append(1)
        running.pop()

    service = OllamaService(url, (), commit=slow_commit, server=AlreadyRunning())
    pull = [f async for f in service.proxy(request_frame("POST", "/api/pull", [], b'{"model": "qwen3:0.6b"}'))]
    assert json.loads(pull[-2][1].splitlines()[-1]) == {"status": "success"}  # the whole stream, with the commit still running
    copy = [f async for f in service.proxy(request_frame("POST", "/api/copy", [], b'{"source": "qwen3:0.6b", "destination": "q2"}'))]
    delete = [f async for f in service.proxy(request_frame("DELETE", "/api/delete", [], b'{"model": "q2"}'))]
    assert copy[0]["status"] == delete[0]["status"] == 200 and commits == []
    release.set()
    await asyncio.wait_for(service.settle(), 5)
    assert commits == [1, 1]  # the first, then one for the two changes made while it ran
    await service.relay.aclose()


async def test_a_failed_commit_is_logged_and_breaks_no_stream(standin, caplog):
    url, _ = standin

    def failing_commit():
        raise RuntimeError("reload failed: a model file is open")

    service = OllamaService(url, (), commit=failing_commit, server=AlreadyRunning())
    frames = [f async for f in service.proxy(request_frame("POST", "/api/pull", [], b'{"model": "qwen3:0.6b"}'))]
    await service.settle()
    assert frames[0]["status"] == 200 and b'"success"' in frames[-2][1]
    assert "volume commit (after an API store change) or its reload failed: RuntimeError" in caplog.text
    assert "Modal commits again when the container exits" in caplog.text
    await service.relay.aclose()


async def test_a_failed_commit_at_start_is_logged_and_the_container_still_serves(standin, caplog):
    url, _ = standin
    caplog.set_level(logging.INFO)

    def failing_commit():
        raise RuntimeError("commit failed")

    service = OllamaService(url, ("qwen3:0.6b",), commit=failing_commit, server=AlreadyRunning())
    await asyncio.to_thread(service.start)
    assert "volume commit (qwen3:0.6b) or its reload failed" in caplog.text and "model qwen3:0.6b loaded in" in caplog.text


async def test_a_store_change_that_breaks_still_sends_what_it_had_then_fails(standin):
    from backend.catalog import DictCatalog
    from tests.fake_modal import FakeModalDict
    from tests.ollama_standin import VERSION

    url, state = standin
    state.die_after = 3  # Ollama dies after three progress lines
    service = OllamaService(url, (), commit=lambda: None, server=AlreadyRunning(), catalog=DictCatalog(FakeModalDict(), VERSION))
    frames = []
    with pytest.raises(Exception, match="ended early"):
        async for frame in service.proxy(request_frame("POST", "/api/pull", [], b'{"model": "qwen3:0.6b"}')):
            frames.append(frame)
    assert frames[0]["status"] == 200 and b"".join(chunk for _, chunk in frames[1:]).count(b"\n") == 3  # the held line too
    await service.relay.aclose()


async def test_a_client_that_leaves_while_the_catalog_is_rebuilt_does_not_cost_the_commit(standin, monkeypatch):
    import threading

    from backend.catalog import DictCatalog
    from tests.fake_modal import FakeModalDict
    from tests.ollama_standin import VERSION

    url, _ = standin
    commits, rebuilding, release = [], threading.Event(), threading.Event()
    service = OllamaService(url, (), commit=lambda: commits.append(1), server=AlreadyRunning(), catalog=DictCatalog(FakeModalDict(), VERSION))

    def slow_refresh(reason):
        rebuilding.set()
        release.wait(5)

    monkeypatch.setattr(service, "refresh_catalog", slow_refresh)

    async def pull():
        async for _ in service.proxy(request_frame("DELETE", "/api/delete", [], b'{"model": "llama3.2"}')):
            pass

    task = asyncio.ensure_future(pull())
    await asyncio.to_thread(rebuilding.wait, 5)
    task.cancel()  # the Modal input is cancelled mid-rebuild
    release.set()
    await asyncio.gather(task, return_exceptions=True)
    await service.settle()
    assert commits == [1]
    await service.relay.aclose()
