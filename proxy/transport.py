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
from backend.wire import BackendUnavailable, Frame, Headers, RequestFrame, UpstreamBroken

log = logging.getLogger(__name__)


class BackendResponse(Protocol):
    status: int
    headers: Headers
    served_by: str  # "backend" (Ollama answered) or "gateway" (proxy.catalog answered)
    cold_start: bool  # this request waited for a GPU container to start
    pool: str  # the GPU pool that answered ("" if none did)

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

    async def open(self, request: RequestFrame) -> BackendResponse:
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
        response = RemoteResponse(self, request_id, head["status"], head["headers"], frames)
        response.cold_start = bool(head.get("cold_start"))
        return response

    async def send_stop(self, request_id: str) -> None:
        try:
            async with asyncio.timeout(self.STOP_SEND_TIMEOUT):
                await asyncio.shield(self.stops.send(request_id))
        except Exception as exc:  # noqa: BLE001 (best effort: the backend's own timeout still bounds the work)
            log.warning("could not send the stop signal for %s: %s", request_id, exc)

    async def aclose(self) -> None:
        return None


class RemoteResponse:
    """A response whose body frames come from a remote generator."""

    served_by = "backend"
    cold_start = False
    pool = ""

    def __init__(self, backend: RemoteBackend, request_id: str, status: int, headers: Headers, frames: AsyncIterator[Frame]) -> None:
        self.status = status
        self.headers = headers
        self._backend = backend
        self._request_id = request_id
        self._frames = frames
        self._over = False  # the backend finished (or failed) on its own: no stop needed

    async def send_body(self, sink: BodySink) -> None:
        draining = False
        try:
            async for chunk in self._frames:
                if not sink.write(chunk):
                    draining = True
                    await sink.drain()
                    draining = False
        except asyncio.CancelledError:
            raise  # we stop reading: aclose() sends the stop
        except Exception:
            # From the sink: our client left, and aclose() stops the backend's work.
            # From the frames: a backend error, which already ended that work.
            self._over = not draining
            raise
        self._over = True

    async def aclose(self) -> None:
        if not self._over:
            # We stopped reading before the end (client left, HEAD, an error of ours).
            self._over = True
            await self._backend.send_stop(self._request_id)
        await self._frames.aclose()


class _Collected:
    """A sink that keeps the first `limit` bytes of a body."""

    def __init__(self, limit: int) -> None:
        self.data = bytearray()
        self.limit = limit

    def write(self, chunk: bytes) -> bool:
        self.data += chunk[: self.limit - len(self.data)]
        return True

    async def drain(self) -> None:
        return None


async def read_body(response: BackendResponse, limit: int) -> bytes:
    """A small body whole (an error, a listing): its first `limit` bytes, the rest read and
    dropped. For the few answers the gateway must read rather than relay."""
    collected = _Collected(limit)
    await response.send_body(collected)
    return bytes(collected.data)


class UnavailableBackend:
    """No Ollama to talk to: every forwarded request gets a 503 that says why."""

    def __init__(self, message: str) -> None:
        self.message = message

    async def open(self, request: RequestFrame) -> BackendResponse:
        raise BackendUnavailable(self.message)

    async def aclose(self) -> None:
        return None
