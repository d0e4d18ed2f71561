"""One HTTP/1.1 client connection to Ollama, parsed by httptools as bytes arrive.

A response body is *pushed*: each piece the parser decodes goes to the attached
`BodySink` inside the same `data_received` call that read it, with no task wake-up or
queue in between. That is what makes relaying a token cost one recv and one send. Until
a sink is attached, or when the body is read with `next_chunk()`, pieces wait in a
small buffer, and reading from the socket pauses while it is full.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Protocol

import httptools

from backend.wire import Headers, UpstreamBroken

log = logging.getLogger(__name__)

# Pause reading from Ollama when this much body is waiting for a slow consumer.
BUFFER_LIMIT = 64 * 1024


class BodySink(Protocol):
    """Where a response body goes, one chunk at a time, in arrival order."""

    def write(self, chunk: bytes) -> bool:
        """Take one chunk now. False means "full": wait for `drain()` before the next."""
        ...

    async def drain(self) -> None:
        """Return when the sink has room again; raise if it never will (its reader left)."""
        ...


class ConnectionClosed(Exception):
    """The connection ended before the response head. `nothing_read`: not one byte of a
    response arrived (the request may safely be sent again on another connection)."""

    def __init__(self, message: str, nothing_read: bool = False) -> None:
        super().__init__(message)
        self.nothing_read = nothing_read


class Http1Connection(asyncio.Protocol):
    """A keep-alive connection that carries one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.closed_by_us = False
        self._parser = httptools.HttpResponseParser(self)
        self._loop = asyncio.get_running_loop()
        self._head: asyncio.Future[tuple[int, Headers]] | None = None
        self._done: asyncio.Future[None] | None = None
        self._paused = False
        self._reset()

    def _reset(self) -> None:
        self._resume()  # a connection starts each exchange reading
        self.reusable = False  # True once a response completed and Ollama allows another
        self.bytes_read = 0  # during the current exchange
        self._headers: Headers = []
        self._head_only = False
        self._delimited = False  # the body has a length or chunked framing (not "until close")
        self._sink: BodySink | None = None
        self._pending: collections.deque[bytes] = collections.deque()
        self._pending_size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._drainer: asyncio.Task[None] | None = None

    # -- one exchange ---------------------------------------------------------------

    async def send(self, request: bytes, head_only: bool) -> tuple[int, Headers]:
        """Send a serialized request; return the response's status and headers."""
        if self.closed or self.transport is None or self.transport.is_closing():
            raise ConnectionClosed("the connection was already closed")
        self._reset()
        self._head_only = head_only
        self._head = self._loop.create_future()
        self._done = self._loop.create_future()
        self.transport.write(request)
        return await self._head

    async def send_body(self, sink: BodySink) -> None:
        """Push the rest of the body into `sink`; return at its end, raise `UpstreamBroken`."""
        assert self._done is not None
        while self._pending:
            chunk = self._take()
            if not sink.write(chunk):
                await sink.drain()
        if not self._done.done():
            self._sink = sink
            try:
                await asyncio.shield(self._done)
            finally:
                self._sink = None
                if self._drainer is not None:
                    self._drainer.cancel()
                    self._drainer = None
                if self._done.done():
                    self._resume()  # never leave a finished connection paused for its next use
        self._done.result()

    async def next_chunk(self) -> bytes:
        """The next piece of the body, b"" at its end; raises `UpstreamBroken`."""
        assert self._done is not None
        while not self._pending:
            if self._done.done():
                self._done.result()
                return b""
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._take()

    @property
    def complete(self) -> bool:
        return self._done is not None and self._done.done() and self._done.exception() is None and not self._pending

    def close(self) -> None:
        self.reusable = False
        if not self.closed:
            self.closed_by_us = True
        if self.transport is not None:
            self.transport.close()

    # -- body plumbing --------------------------------------------------------------

    def _take(self) -> bytes:
        chunk = self._pending.popleft()
        self._pending_size -= len(chunk)
        if self._paused and self._pending_size < BUFFER_LIMIT and self._drainer is None:
            self._resume()
        return chunk

    def _pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

    async def _drain_then_resume(self, sink: BodySink) -> None:
        try:
            await sink.drain()
        except Exception as exc:  # noqa: BLE001 (the sink's reader left: end the exchange with its error)
            self._finish(exc)
        else:
            self._drainer = None
            self._resume()

    def _finish(self, error: BaseException | None = None) -> None:
        done = self._done
        if done is not None and not done.done():
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.bytes_read += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            # httptools wraps whatever our own callbacks raised: that is our bug, not Ollama's.
            log.error("relay callback failed", exc_info=exc.__context__ or exc)
            self._fail(UpstreamBroken(f"the relay failed on Ollama's response: {exc.__context__ or exc}"))
            self.close()
        except httptools.HttpParserError as exc:
            self._fail(UpstreamBroken(f"Ollama sent a malformed response: {exc}"))
            self.close()
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamBroken("Ollama switched protocols, which the relay does not support"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        head_in = self._head is not None and self._head.done()
        if head_in and not self._delimited and not self._head_only and exc is None and not self.closed_by_us:
            self._finish()  # a body that runs until Ollama closes the connection has ended
        else:
            self._fail(ConnectionClosed(f"{exc or 'closed by Ollama'}", nothing_read=self.bytes_read == 0))

    def _fail(self, error: Exception) -> None:
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # retrieved: nobody may be waiting any more
            return
        if not isinstance(error, UpstreamBroken):
            error = UpstreamBroken(f"Ollama's response ended early: {error}")
        self._finish(error)
        if self._done is not None and self._done.done():
            self._done.exception()  # mark retrieved; the reader sees it via result()

    # -- httptools callbacks --------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._head is None or self._done is None or self._done.done():
            # A response nobody asked for (after the last one ended, or on an idle
            # connection): the connection can no longer be trusted.
            self._fail(UpstreamBroken("Ollama sent a response nobody asked for"))
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head is None or self._head.done():
            return  # trailer fields: the head was already handed on
        lowered = name.lower()
        if lowered == b"content-length" or (lowered == b"transfer-encoding" and b"chunked" in value.lower()):
            self._delimited = True
        self._headers.append((name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim response: the real one follows
            self._headers = []
            self._delimited = False
            return
        if self._head is not None and not self._head.done():
            self._head.set_result((status, self._headers))
        if self._head_only:
            # No body follows a HEAD answer whatever its headers say; the parser cannot
            # be told so, so this connection is not reused.
            self._finish()

    def on_body(self, body: bytes) -> None:
        if self._head_only or self._done is None or self._done.done():
            return
        sink = self._sink
        if sink is not None and not self._pending:
            if not sink.write(body) and self._drainer is None:
                self._pause()
                self._drainer = self._loop.create_task(self._drain_then_resume(sink))
            return
        self._pending.append(body)
        self._pending_size += len(body)
        if self._pending_size >= BUFFER_LIMIT:
            self._pause()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 or self._head_only or self._done is None or self._done.done():
            return
        self.reusable = self._parser.should_keep_alive()
        self._finish()
