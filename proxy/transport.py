"""The seam between the gateway and "a backend".

The gateway only knows `Backend.stream(request)`: an async iterator of frames (a head
dict, then bytes). Two transports implement it: in process (local mode, tests) and Modal
RPC (the deployed gateway). The relay itself lives once, in `backend.relay`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from backend.cancel import StopSignals
from backend.relay import OllamaRelay
from backend.wire import BackendUnavailable, Frame, RequestFrame


log = logging.getLogger(__name__)


class Backend(Protocol):
    def stream(self, request: RequestFrame) -> AsyncIterator[Frame]:
        """Yield the response head, then body chunks. Closing it early cancels the request."""
        ...

    async def aclose(self) -> None: ...


class InProcessBackend:
    """Runs the relay in this process, against an Ollama this machine can reach."""

    def __init__(self, relay: OllamaRelay) -> None:
        self.relay = relay

    def stream(self, request: RequestFrame) -> AsyncIterator[Frame]:
        return self.relay.stream(request)

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

    async def stream(self, request: RequestFrame) -> AsyncIterator[Frame]:
        request_id = uuid.uuid4().hex
        frames = self.call({**request, "request_id": request_id})
        try:
            try:
                head = await anext(frames)
            except StopAsyncIteration:
                return
            except (BackendUnavailable, asyncio.CancelledError):
                raise
            except Exception as exc:  # noqa: BLE001 (the container could not be reached or failed to start)
                first_line = (str(exc).splitlines() or [""])[0][:200]
                raise BackendUnavailable(f"the backend could not be reached or failed to start ({type(exc).__name__}: {first_line})") from None
            yield head
            async for frame in frames:
                yield frame
        except (GeneratorExit, asyncio.CancelledError):
            # We stopped reading before the end (client left, or no first byte in time):
            # the container must be told. A backend error needs no stop: it is over.
            await self._send_stop(request_id)
            raise
        finally:
            await frames.aclose()

    async def _send_stop(self, request_id: str) -> None:
        try:
            async with asyncio.timeout(self.STOP_SEND_TIMEOUT):
                await asyncio.shield(self.stops.send(request_id))
        except Exception as exc:  # noqa: BLE001 (best effort: the backend's own timeout still bounds the work)
            log.warning("could not send the stop signal for %s: %s", request_id, exc)

    async def aclose(self) -> None:
        return None


class UnavailableBackend:
    """No Ollama to talk to: every forwarded request gets a 503 that says why."""

    def __init__(self, message: str) -> None:
        self.message = message

    async def stream(self, request: RequestFrame) -> AsyncIterator[Frame]:
        raise BackendUnavailable(self.message)
        yield  # pragma: no cover  (makes this an async generator)

    async def aclose(self) -> None:
        return None
