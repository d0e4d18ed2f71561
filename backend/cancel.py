"""Stop signals: how "the client left" reaches the container running that request.

Closing a Modal `remote_gen` iterator early sends nothing to the container: the client
just stops reading, and the backend would keep Ollama generating for nobody (see the
README's "Stop means stop"). So the gateway sends an explicit stop keyed by the request's
id, and the backend, wherever Modal placed that request, waits for it beside the stream.

`StopSignals` is the seam: `QueueStopSignals` rides on a `modal.Queue` (one partition per
request), `LocalStopSignals` on asyncio events for tests of the same path in process.
"""

from __future__ import annotations

import asyncio
import logging
import queue as std_queue
from collections.abc import AsyncIterator
from typing import Any, Protocol, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class StopSignals(Protocol):
    async def send(self, request_id: str) -> None:
        """Ask the backend to stop the request `request_id`."""
        ...

    async def wait(self, request_id: str) -> None:
        """Return once a stop for `request_id` was sent."""
        ...


class LocalStopSignals:
    """In-process signals (tests, or a gateway and backend in one process)."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._waiting: dict[str, int] = {}  # a preempted run's waiter may linger beside its re-run's
        self.sent: list[str] = []

    def _event(self, request_id: str) -> asyncio.Event:
        return self._events.setdefault(request_id, asyncio.Event())

    async def send(self, request_id: str) -> None:
        self.sent.append(request_id)
        self._event(request_id).set()

    async def wait(self, request_id: str) -> None:
        self._waiting[request_id] = self._waiting.get(request_id, 0) + 1
        try:
            await self._event(request_id).wait()
        finally:
            self._waiting[request_id] -= 1
            if not self._waiting[request_id]:  # the last one forgets the request
                del self._waiting[request_id]
                self._events.pop(request_id, None)


class QueueStopSignals:
    """Signals through a `modal.Queue`, one partition per request id."""

    TTL = 3600  # seconds: a stop nobody read is dropped after this
    RETRY_AFTER = 1.0  # seconds, after a failed long-poll

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    async def send(self, request_id: str) -> None:
        await self.queue.put.aio(True, partition=request_id, partition_ttl=self.TTL)

    async def wait(self, request_id: str) -> None:
        while True:
            try:
                await self.queue.get.aio(partition=request_id, timeout=300)
                return
            except std_queue.Empty:
                continue
            except Exception as exc:  # noqa: BLE001
                # A failing Queue is not a stop: returning would end the stream early,
                # and the client would take the cut-off answer for the whole one.
                log.warning("waiting for a stop signal failed (%s: %s); retrying", type(exc).__name__, exc)
                await asyncio.sleep(self.RETRY_AFTER)


async def until_stopped(frames: AsyncIterator[T], stop: asyncio.Future) -> AsyncIterator[T]:
    """Yield from `frames` until they end or `stop` completes; then close `frames`.

    Closing `frames` (the relay) closes the connection to Ollama, which cancels the
    generation. Waiting on both costs one task per chunk, only on the Modal path.
    """
    step: asyncio.Future | None = None
    try:
        while True:
            step = asyncio.ensure_future(anext(frames))
            await asyncio.wait((step, stop), return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                log.info("stop signal received: closing the request to Ollama")
                return
            try:
                frame = step.result()
            except StopAsyncIteration:
                return
            yield frame
    finally:
        # Also reached when this input itself is cancelled while waiting: the step
        # must end before the source can be closed (it is still running inside it).
        if step is not None and not step.done():
            step.cancel()
            await asyncio.gather(step, return_exceptions=True)
        stop.cancel()
        await frames.aclose()
