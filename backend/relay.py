"""The relay: one request to the local Ollama, its response pushed or streamed back.

This is the code the Modal method runs on the GPU container, and the code local mode
runs in process. It keeps one pool of keep-alive connections for its whole life and
never reads a whole response body: each chunk moves on as soon as Ollama sends it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
import time
from collections.abc import AsyncIterator

from yarl import URL

from backend.http1 import BodySink, ConnectionClosed, Http1Connection
from backend.wire import END, BackendUnavailable, Headers, HeadFrame, RequestFrame, declares_length, head_frame

log = logging.getLogger(__name__)

# Connecting to a loopback Ollama is instant or it is down. There is no total timeout:
# a generation may legitimately run for the whole request timeout, which callers enforce.
CONNECT_TIMEOUT = 10.0
# Idle keep-alive connections kept for reuse (as many as a burst of streams opened),
# each for at most IDLE_SECONDS; beyond either, a connection is closed.
MAX_IDLE = 1024
IDLE_SECONDS = 30.0
# Methods whose request always carries a length, even an empty one (as aiohttp sends).
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Safe to send twice (RFC 9110 9.2.2, as Go's http.Transport retries them): not POST, which
# may start a generation or a pull, nor DELETE.
_REPLAYABLE = frozenset({"GET", "HEAD", "OPTIONS"})


def serialize_request(method: str, target: str, host: str, headers: Headers, body: bytes) -> bytes:
    """An HTTP/1.1 request head and body. Header names and values that could split the
    head (CR, LF) are refused: they never come from aiohttp's parser, but this is the
    last place that could let one through."""
    if not method.isalpha() or any(c in target for c in " \r\n"):
        raise ValueError(f"refusing to send a malformed request line: {method!r} {target!r}")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    for name, value in headers:
        if any(c in name or c in value for c in "\r\n") or ":" in name:
            raise ValueError(f"refusing to send a malformed header: {name!r}")
        lines.append(f"{name}: {value}")
    if body or method in _BODY_METHODS:
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
    return head + body if body else head


class UpstreamResponse:
    """Ollama's answer to one request: its head now, its body pushed or pulled later.

    `aclose()` must follow: a finished body returns the connection to the pool; an
    unfinished one closes it, which is how Ollama learns to stop generating.
    """

    served_by = "backend"
    cold_start = False  # set by whoever knows (the remote transport, from the backend)
    reruns = 0  # a local Ollama is never preempted
    pool = ""  # set by proxy.pools

    def __init__(self, relay: OllamaRelay, connection: Http1Connection, status: int, headers: Headers) -> None:
        self.status = status
        self.headers = headers
        self._relay = relay
        self._connection: Http1Connection | None = connection

    async def send_body(self, sink: BodySink) -> None:
        """Write each body chunk to `sink` as it arrives; raises `UpstreamBroken`."""
        assert self._connection is not None, "the response was closed"
        await self._connection.send_body(sink)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as an async iterator of chunks, for callers that must pull."""
        assert self._connection is not None, "the response was closed"
        while chunk := await self._connection.next_chunk():
            yield chunk

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._relay._release(connection)


class OllamaRelay:
    """Forwards `RequestFrame`s to one Ollama at `base_url` (e.g. http://127.0.0.1:11434)."""

    def __init__(self, base_url: str) -> None:
        url = URL(base_url)
        if url.host is None or url.scheme not in ("http", "https"):
            raise ValueError(f"not an http(s) base URL: {base_url!r}")
        self.base_url = url
        # Ollama sees its own host:port as Host, as if it were called directly.
        self._host_header = url.host_port_subcomponent or ""  # "[::1]:11434" for IPv6
        self._idle: collections.deque[tuple[float, Http1Connection]] = collections.deque()  # oldest first
        self._busy: set[Http1Connection] = set()
        self._pruner: asyncio.TimerHandle | None = None  # closes idle connections when traffic stops

    def serialize(self, request: RequestFrame) -> bytes:
        """`request` as bytes for *this* Ollama: an origin-form target (percent-encoding
        kept as the client sent it) and Ollama's own Host, never the client's."""
        path = request["path"]
        if not path.startswith("/") or path.startswith("//"):
            raise ValueError(f"not an origin-form path: {path!r}")
        headers = [(k, v) for k, v in request["headers"] if k.lower() != "host"]
        return serialize_request(request["method"], path, self._host_header, headers, request["body"])

    @property
    def connections_in_use(self) -> int:
        return len(self._busy)

    async def open(self, request: RequestFrame) -> UpstreamResponse:
        """Send `request`; return once Ollama's response head is in.

        Raises `BackendUnavailable` if Ollama cannot be reached or closes the
        connection before answering. Cancelling this cancels the request.
        """
        method = request["method"]
        payload = self.serialize(request)
        fresh = False
        while True:
            connection, reused = await self._acquire(fresh)
            try:
                status, response_headers = await connection.send(payload, head_only=method == "HEAD")
            except ConnectionClosed as exc:
                self._release(connection)
                if reused and exc.nothing_read and method in _REPLAYABLE:
                    # Ollama dropped an idle connection just as we reused it. Like Go's
                    # client, send again (on a new connection) only what is safe to repeat.
                    fresh = True
                    continue
                raise BackendUnavailable(f"Ollama at {self.base_url} closed the connection without answering ({exc})") from None
            except BaseException:
                connection.close()
                self._release(connection)
                raise
            return UpstreamResponse(self, connection, status, response_headers)

    async def stream(self, request: RequestFrame) -> AsyncIterator[HeadFrame | bytes]:
        """The response: the head frame, then body chunks as they arrive.

        The Modal method yields these, marked with its run (backend.service). Closing the
        generator early closes the upstream connection, which is how Ollama learns to stop
        generating.
        """
        response = await self.open(request)
        try:
            head = head_frame(response.status, response.headers)
            chunks = response.chunks()
            if declares_length(response.headers):
                # Its first bytes cross in the head's frame (Ollama sends such a body with
                # its head): no re-run elsewhere can then leave the client holding a
                # declared length and none of its body (see proxy.transport).
                head["body"] = await anext(chunks, END)
            yield head
            async for chunk in chunks:
                yield chunk
        finally:
            await response.aclose()

    async def _acquire(self, fresh: bool = False) -> tuple[Http1Connection, bool]:
        self._prune_idle()
        while self._idle and not fresh:
            _, connection = self._idle.pop()  # the most recently used: least likely to be stale
            if connection.reusable and not connection.closed and not connection.transport.is_closing():
                self._busy.add(connection)
                return connection, True
            connection.close()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                _, connection = await asyncio.get_running_loop().create_connection(
                    Http1Connection,
                    self.base_url.raw_host,
                    self.base_url.port,
                    ssl=ssl.create_default_context() if self.base_url.scheme == "https" else None,
                )
        except (OSError, asyncio.TimeoutError) as exc:
            raise BackendUnavailable(f"Ollama is not reachable at {self.base_url}: {exc or type(exc).__name__}") from None
        self._busy.add(connection)
        return connection, False

    def _release(self, connection: Http1Connection) -> None:
        self._busy.discard(connection)
        if connection.reusable and connection.complete and not connection.closed and len(self._idle) < MAX_IDLE:
            self._idle.append((time.monotonic(), connection))
            if self._pruner is None:
                self._pruner = asyncio.get_running_loop().call_later(IDLE_SECONDS, self._prune_on_timer)
        else:
            connection.close()

    def _prune_idle(self) -> None:
        """Close idle connections older than IDLE_SECONDS (or already closed by Ollama)."""
        too_old = time.monotonic() - IDLE_SECONDS
        while self._idle and (self._idle[0][0] < too_old or self._idle[0][1].closed):
            self._idle.popleft()[1].close()

    def _prune_on_timer(self) -> None:
        # Without traffic nothing else would prune: check again while any stay idle.
        self._prune_idle()
        self._pruner = asyncio.get_running_loop().call_later(IDLE_SECONDS, self._prune_on_timer) if self._idle else None

    async def aclose(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
            self._pruner = None
        for connection in [*(c for _, c in self._idle), *self._busy]:
            connection.close()
        self._idle.clear()
        self._busy.clear()
