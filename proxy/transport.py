"""The seam between the gateway and "a backend".

The gateway knows two calls: `Backend.open(request)`, which returns the response head,
and `BackendResponse.send_body(sink)`, which writes the body into a `BodySink` as it
arrives. Two transports implement them: in process (local mode, tests), where the relay
pushes each chunk from the socket callback straight to the client, and Modal RPC (the
deployed gateway), where frames arrive from a remote generator. The relay itself lives
once, in `backend.relay`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from backend.cancel import StopSignals
from backend.http1 import BodySink
from backend.relay import OllamaRelay
from backend.wire import END, BackendPreempted, BackendUnavailable, Frame, Headers, HeadFrame, RequestFrame, UpstreamBroken
from proxy.headers import body_length

log = logging.getLogger(__name__)


class BackendResponse(Protocol):
    status: int
    headers: Headers
    served_by: str  # "backend" (Ollama answered) or "gateway" (proxy.catalog answered)
    cold_start: bool  # this request waited for a GPU container to start
    pool: str  # the GPU pool that answered ("" if none did)
    reruns: int  # preempted runs replaced by a fresh call before the client saw any body

    async def send_body(self, sink: BodySink) -> None:
        """Write body chunks to `sink` as they arrive; return at the end. Raises `UpstreamBroken`."""
        ...

    async def aclose(self) -> None:
        """Release the response. If its body was not finished, the backend stops its work."""
        ...


class Backend(Protocol):
    async def open(self, request: RequestFrame) -> BackendResponse:
        """Send `request`, return its response head. Raises `BackendUnavailable`."""
        ...

    async def aclose(self) -> None: ...


class InProcessBackend:
    """Runs the relay in this process, against an Ollama this machine can reach."""

    def __init__(self, relay: OllamaRelay) -> None:
        self.relay = relay

    async def open(self, request: RequestFrame) -> BackendResponse:
        return await self.relay.open(request)

    async def aclose(self) -> None:
        await self.relay.aclose()


class RemoteBackend:
    """Calls a backend in another process, whose stream does not end when we stop reading.

    On Modal, `call` is `OllamaBackend().proxy.remote_gen.aio`: only plain dicts and
    bytes cross it. Closing a `remote_gen` early tells the container nothing, so when a
    stream ends before its last frame, a stop is sent through `stops` for its request id.
    """

    STOP_SEND_TIMEOUT = 10.0

    def __init__(self, call: Callable[[RequestFrame], AsyncIterator[Frame]], stops: StopSignals) -> None:
        self.call = call
        self.stops = stops

    async def open(self, request: RequestFrame) -> RemoteResponse:
        request_id = uuid.uuid4().hex
        frames = self.call({**request, "request_id": request_id, "sent_at": time.time()})
        try:
            head = await anext(frames)
            if not isinstance(head, dict):
                raise UpstreamBroken("the backend sent a body before its response head")
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                await self.send_stop(request_id)  # no head in time (or the client left): tell the container
            await frames.aclose()
            if isinstance(exc, StopAsyncIteration):
                raise UpstreamBroken("the backend closed the stream without a response") from None
            if isinstance(exc, (BackendUnavailable, UpstreamBroken)) or not isinstance(exc, Exception):
                raise
            # The container could not be reached or failed to start.
            first_line = (str(exc).splitlines() or [""])[0][:200]
            raise BackendUnavailable(f"the backend could not be reached or failed to start ({type(exc).__name__}: {first_line})") from None
        return RemoteResponse(self, request, request_id, head, frames)

    async def send_stop(self, request_id: str) -> None:
        try:
            async with asyncio.timeout(self.STOP_SEND_TIMEOUT):
                await asyncio.shield(self.stops.send(request_id))
        except Exception as exc:  # noqa: BLE001 (best effort: the backend's own timeout still bounds the work)
            log.warning("could not send the stop signal for %s: %s", request_id, exc)

    async def aclose(self) -> None:
        return None


PREEMPTED = "the GPU container was preempted and the answer is incomplete: try again"
# Fresh calls a response may make for a preempted run before any of it reached the client.
MAX_RERUNS = 3


def _shape(status: int, headers: Headers) -> tuple:
    """What a client holding this head expects of the body: a fresh call with the same
    shape can take the place of a run that sent none of its body."""
    picked = {name.lower(): value for name, value in headers if name.lower() in ("content-length", "content-type", "transfer-encoding")}
    return status, picked


class RemoteResponse:
    """A response whose body frames come from a remote generator.

    Modal re-runs an input whose container was preempted, and its client skips the frames
    whose index it already has: the frames then come from a second generation. Each frame
    names its run (backend.wire); the first frame of another run ends this one. If none of
    the body reached the sink yet, the re-run is stopped and a fresh call takes its place,
    unseen (`reruns` counts them); otherwise `send_body` raises `BackendPreempted`, and the
    re-run is stopped by `aclose()` like any stream left early.
    """

    served_by = "backend"
    cold_start = False
    pool = ""

    def __init__(self, backend: RemoteBackend, request: RequestFrame, request_id: str, head: HeadFrame, frames: AsyncIterator[Frame]) -> None:
        self.status = head["status"]
        self.headers = head["headers"]
        self.cold_start = bool(head.get("cold_start"))
        self.reruns = 0
        self._backend = backend
        self._request = request  # for a fresh call (Modal's own call holds it until the end anyway)
        self._request_id = request_id
        self._run = head.get("run")
        self._first = head.get("body", END)  # a body of declared length comes with its head
        self._frames = frames
        self._over = False  # the backend finished (or failed) on its own: no stop needed

    async def send_body(self, sink: BodySink) -> None:
        draining = False
        written = False  # some of the body reached the sink: no fresh call can replace it
        try:
            while True:
                if self._first:
                    written = True
                    if not sink.write(self._first):
                        draining = True
                        await sink.drain()
                        draining = False
                run, chunk = self._run, None
                # Per chunk: one unpack and one comparison of ints.
                async for frame_run, chunk in self._frames:
                    if frame_run != run:
                        break  # a re-run's frame: never relayed
                    if not sink.write(chunk):
                        draining = True
                        await sink.drain()
                        draining = False
                    written = True
                else:
                    if chunk == END:
                        break  # this run's end: the whole answer
                    # Ended without its end frame: a shorter re-run ended the stream.
                if written or self.reruns >= MAX_RERUNS:
                    raise BackendPreempted(PREEMPTED)
                await self._call_again()
        except asyncio.CancelledError:
            raise  # we stop reading: aclose() sends the stop
        except BackendPreempted:
            raise  # aclose() stops the re-run
        except Exception:
            # From the sink: our client left, and aclose() stops the backend's work.
            # From the frames: a backend error, which already ended that work.
            self._over = not draining
            raise
        self._over = True

    async def _call_again(self) -> None:
        """Stop the re-run and make a fresh call in its place; BackendPreempted if its
        answer cannot take the place of the one the client has the head of."""
        await self._backend.send_stop(self._request_id)
        await self._frames.aclose()
        self.reruns += 1
        log.warning("the backend's container was preempted before any of the body was sent: calling it again")
        self._over = True  # until the fresh call has a head, nothing runs that we must stop (open() stops its own)
        try:
            fresh = await self._backend.open(self._request)
        except Exception as exc:  # noqa: BLE001
            raise BackendPreempted(f"{PREEMPTED} (calling the backend again failed: {exc})") from None
        self._over = False
        self._request_id, self._frames, self._run, self._first = fresh._request_id, fresh._frames, fresh._run, fresh._first
        if _shape(fresh.status, fresh.headers) != _shape(self.status, self.headers):
            raise BackendPreempted(f"{PREEMPTED} (calling the backend again gave another kind of answer: {fresh.status})")

    async def aclose(self) -> None:
        if not self._over:
            # We stopped reading before the end (client left, HEAD, an error of ours, a re-run).
            self._over = True
            await self._backend.send_stop(self._request_id)
        await self._frames.aclose()


class _Collected:
    """A sink that keeps the first `limit` bytes of a body."""

    def __init__(self, limit: int) -> None:
        self.data = bytearray()
        self.limit = limit
        self.size = 0

    def write(self, chunk: bytes) -> bool:
        self.data += chunk[: self.limit - len(self.data)]
        self.size += len(chunk)
        return True

    async def drain(self) -> None:
        return None


async def read_body(response: BackendResponse, limit: int) -> bytes:
    """A small body whole (an error, a listing): its first `limit` bytes, the rest read and
    dropped. For the few answers the gateway must read rather than relay."""
    collected = _Collected(limit)
    try:
        await response.send_body(collected)
    except BackendPreempted:
        if collected.size != body_length(response.headers):
            raise
        # All of its declared length came: the preemption came after the end.
    return bytes(collected.data)


class UnavailableBackend:
    """No Ollama to talk to: every forwarded request gets a 503 that says why."""

    def __init__(self, message: str) -> None:
        self.message = message

    async def open(self, request: RequestFrame) -> BackendResponse:
        raise BackendUnavailable(self.message)

    async def aclose(self) -> None:
        return None
