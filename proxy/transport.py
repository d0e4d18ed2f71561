"""The seam between the gateway and "a backend".

The gateway only knows `Backend.stream(request)`: an async iterator of frames (a head
dict, then bytes). Two transports implement it: in process (local mode, tests) and Modal
RPC (the deployed gateway). The relay itself lives once, in `backend.relay`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from backend.relay import OllamaRelay
from backend.wire import BackendUnavailable, Frame, RequestFrame


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


class ModalBackend:
    """Calls the GPU class's `proxy` generator method over Modal RPC.

    `method` is `OllamaBackend().proxy`; only plain dicts and bytes cross the call.
    """

    def __init__(self, method: Any) -> None:
        self.method = method

    def stream(self, request: RequestFrame) -> AsyncIterator[Frame]:
        return self.method.remote_gen.aio(request)

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
