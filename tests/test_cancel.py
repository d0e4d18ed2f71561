"""Stop means stop: a client that leaves mid-stream stops Ollama, locally and over the
remote (Modal-like) transport, and leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp
import pytest

from backend.cancel import LocalStopSignals, until_stopped
from backend.relay import OllamaRelay
from backend.service import OllamaService
from proxy.transport import InProcessBackend, RemoteBackend
from tests.conftest import wait_for
from tests.fake_modal import FakeModalQueue, detached_call

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "tell me a long story"}], "options": {"num_predict": 400}}


async def leave_mid_stream(url: str, lines: int = 2) -> float:
    """Read `lines` lines of a chat stream, then drop the connection; return when."""
    async with aiohttp.ClientSession() as session:
        response = await session.post(url + "/ollama/api/chat", json=CHAT)
        assert response.status == 200
        for _ in range(lines):
            assert (await response.content.readline()).endswith(b"\n")
        response.close()
        return time.monotonic()


async def test_local_disconnect_stops_ollama_within_a_second(standin, gateway):
    _, state = standin
    state.token_delay = 0.02  # 400 tokens: 8 s if nobody stops it
    left = await leave_mid_stream(gateway)
    assert await wait_for(lambda: state.streams_cancelled == 1)
    assert state.cancel_times[0] - left < 1.0
    assert state.streams_finished == 0


async def test_disconnect_before_the_first_token_stops_ollama_too(standin, gateway):
    # While Ollama loads a model or reads the prompt, no chunk flows: the gateway must
    # notice the disconnect on its own, not at its next write.
    _, state = standin
    state.first_token_delay = 5.0
    async with aiohttp.ClientSession() as session:
        request = asyncio.ensure_future(session.post(gateway + "/ollama/api/chat", json=CHAT))
        await asyncio.sleep(0.3)
        request.cancel()
        left = time.monotonic()
    assert await wait_for(lambda: state.streams_cancelled == 1)
    assert state.cancel_times[0] - left < 1.0
    assert state.streams_started == 0  # stopped while "loading", before any token


async def remote_gateway_with_stops(remote: OllamaService, start_gateway) -> tuple[str, LocalStopSignals, object]:
    """A gateway on the Modal-like transport whose backend honours stop signals."""
    stops = LocalStopSignals()
    call = detached_call(lambda request: remote.proxy(request, stops=stops))
    return await start_gateway(RemoteBackend(call, stops)), stops, call


@pytest.fixture
def remote(standin):
    url, _ = standin
    service = OllamaService(url, (), commit=lambda: None)
    return service


async def test_remote_transport_without_a_stop_signal_keeps_ollama_busy(standin, remote, start_gateway):
    # The control: what the stop signal exists for. Closing a Modal-like stream early
    # does not reach the producer, so Ollama generates to the end for nobody.
    _, state = standin
    state.token_delay = 0.005  # 400 tokens: 2 s
    call = detached_call(lambda request: remote.proxy(request))  # no stop signals
    gateway = await start_gateway(RemoteBackend(call, LocalStopSignals()))
    await leave_mid_stream(gateway)
    assert await wait_for(lambda: state.streams_finished == 1, timeout=10)
    assert state.streams_cancelled == 0


async def test_remote_disconnect_sends_a_stop_that_stops_ollama_within_a_second(standin, remote, start_gateway):
    _, state = standin
    state.token_delay = 0.02
    gateway, stops, call = await remote_gateway_with_stops(remote, start_gateway)
    left = await leave_mid_stream(gateway)
    assert await wait_for(lambda: state.streams_cancelled == 1)
    assert state.cancel_times[0] - left < 1.0
    assert len(stops.sent) == 1
    assert await wait_for(lambda: all(p.done() for p in call.producers))


async def test_a_completed_remote_stream_sends_no_stop(standin, remote, start_gateway, http):
    gateway, stops, _ = await remote_gateway_with_stops(remote, start_gateway)
    async with http.post(gateway + "/ollama/api/chat", json={**CHAT, "options": {"num_predict": 5}}) as response:
        assert (await response.read()).count(b"\n") == 6
    assert stops.sent == []


async def test_until_stopped_closes_the_source_when_stopped():
    closed = asyncio.Event()

    async def source():
        try:
            for i in range(1000):
                yield i
                await asyncio.sleep(0.01)
        finally:
            closed.set()

    stop = asyncio.get_running_loop().create_future()
    got = []
    async for item in until_stopped(source(), stop):
        got.append(item)
        if item == 3:
            stop.set_result(None)
    assert got == [0, 1, 2, 3]
    assert closed.is_set()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def abort_200_streams_and_check_nothing_is_left(gateway: str, state, relay: OllamaRelay, extra_check=lambda: True) -> None:
    """200 streams left part-way (after a warm-up that fills pools and lazy sessions):
    Ollama saw every one cancelled, and no task, fd or upstream connection remains."""
    await leave_mid_stream(gateway, lines=1)
    assert await wait_for(lambda: state.active == 0 and extra_check())
    tasks_before, fds_before = len(asyncio.all_tasks()), open_fds()

    for _ in range(4):
        await asyncio.gather(*(leave_mid_stream(gateway, lines=1 + i % 3) for i in range(50)))

    assert await wait_for(lambda: state.streams_cancelled == 201 and state.active == 0, timeout=10)
    assert await wait_for(extra_check, timeout=5)
    assert await wait_for(lambda: len(asyncio.all_tasks()) <= tasks_before, timeout=5), asyncio.all_tasks()
    assert await wait_for(lambda: open_fds() <= fds_before, timeout=5), (open_fds(), fds_before)
    assert relay.connections_in_use == 0  # no upstream connection still held


async def test_200_aborted_streams_leave_no_task_connection_or_fd(standin, start_gateway):
    url, state = standin
    state.token_delay = 0.01
    relay = OllamaRelay(url)
    gateway = await start_gateway(InProcessBackend(relay))
    await abort_200_streams_and_check_nothing_is_left(gateway, state, relay)


async def test_queue_stop_signals_use_one_partition_per_request_and_keep_waiting():
    from backend.cancel import QueueStopSignals

    queue = FakeModalQueue()
    signals = QueueStopSignals(queue)
    waiter = asyncio.ensure_future(signals.wait("req-1"))
    await asyncio.sleep(0.2)  # several empty long-polls
    assert not waiter.done() and queue.gets >= 2
    await signals.send("req-2")
    await asyncio.sleep(0.1)
    assert not waiter.done()  # another request's stop
    await signals.send("req-1")
    await asyncio.wait_for(waiter, 1)
    assert queue.puts == [("req-2", 3600), ("req-1", 3600)]


async def test_a_failing_queue_is_not_a_stop(monkeypatch):
    from backend.cancel import QueueStopSignals

    queue = FakeModalQueue()
    real_get = queue.get.aio
    failures = []

    async def flaky_get(*, partition, timeout):
        if len(failures) < 2:
            failures.append(partition)
            raise ConnectionError("the Queue service is unreachable")
        return await real_get(partition=partition, timeout=timeout)

    monkeypatch.setattr(queue.get, "aio", flaky_get)
    monkeypatch.setattr(QueueStopSignals, "RETRY_AFTER", 0.01)
    signals = QueueStopSignals(queue)
    waiter = asyncio.ensure_future(signals.wait("req-1"))
    await asyncio.sleep(0.2)
    assert failures == ["req-1", "req-1"] and not waiter.done()  # the stream would go on
    await signals.send("req-1")
    await asyncio.wait_for(waiter, 1)


async def test_until_stopped_cancelled_while_waiting_closes_the_source_cleanly():
    # The Modal input itself cancelled (timeout, shutdown) while a chunk is awaited.
    closed = asyncio.Event()

    async def source():
        try:
            yield 0
            await asyncio.sleep(60)
            yield 1
        finally:
            closed.set()

    stop = asyncio.get_running_loop().create_future()
    tasks_before = len(asyncio.all_tasks())

    async def consume():
        async for _ in until_stopped(source(), stop):
            pass

    consumer = asyncio.ensure_future(consume())
    await asyncio.sleep(0.05)
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer  # not "RuntimeError: aclose(): asynchronous generator is already running"
    assert closed.is_set() and stop.cancelled()
    assert len(asyncio.all_tasks()) == tasks_before


async def test_a_stopped_pull_does_not_commit_the_volume(standin):
    url, state = standin
    state.token_delay = 0.2
    commits = []
    service = OllamaService(url, (), commit=lambda: commits.append(1))
    stops = LocalStopSignals()
    request = {"method": "POST", "path": "/api/pull", "headers": [], "body": b'{"model": "qwen3:0.6b"}', "request_id": "r1"}
    got = []
    async for frame in service.proxy(request, stops=stops):
        got.append(frame)
        if len(got) == 2:
            await stops.send("r1")
    assert len(got) == 2 and commits == []
    await service.relay.aclose()


async def test_200_aborted_remote_streams_leave_no_task_or_stop_waiter(standin, remote, start_gateway):
    # The Modal-like path: per request a producer, a stop waiter and the until_stopped step.
    _, state = standin
    state.token_delay = 0.01
    gateway, stops, call = await remote_gateway_with_stops(remote, start_gateway)
    await abort_200_streams_and_check_nothing_is_left(gateway, state, remote.relay, lambda: all(p.done() for p in call.producers))
    assert len(stops.sent) == 201
    assert stops._events == {}  # every stop waiter is gone
