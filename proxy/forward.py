"""Forwarding one client request through a `Backend`, streaming the answer back."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from aiohttp.web import RequestPayloadError

from backend.wire import BackendUnavailable, UpstreamBroken, request_frame
from proxy.errors import error_response, stream_error_tail
from proxy.headers import body_length, client_response_headers, upstream_request_headers
from proxy.observe import Exchange, model_of
from proxy.paths import api_family, upstream_path
from proxy.transport import Backend, BackendResponse

log = logging.getLogger(__name__)

EXCHANGE = web.RequestKey("exchange", Exchange)  # filled here, recorded by the observe middleware
_PATH = web.RequestKey("upstream_path", str)


def forwarded_path(request: web.Request) -> str | None:
    """Where this request lands on Ollama (None: not forwarded). Computed once per request."""
    if _PATH not in request:
        request[_PATH] = upstream_path(request.rel_url.raw_path, request.rel_url.raw_query_string) or ""
    return request[_PATH] or None


class ClientBody:
    """The `BodySink` that writes a streamed response body to the client's socket.

    Each chunk goes to the transport in the call that delivers it, framed the way the
    response's head announced (chunked or not): no task, queue or copy per chunk beyond
    the chunk-size line. aiohttp's writer still owns the head and the final
    `write_eof()`; flow control is aiohttp's too (`drain()` waits while the socket's
    buffer is over its high-water mark).
    """

    HIGH_WATER = 64 * 1024

    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        self._request = request
        self._transport = request.transport
        self._chunked = response.headers.get("Transfer-Encoding", "").lower() == "chunked"
        # A declared length is a promise to the client: never write past it (on Modal
        # the bytes come from frames, which nothing else counts).
        self._length = None if self._chunked else response.content_length
        self.overrun = False  # the backend sent more than it declared
        self.sent = 0  # a plain int per chunk; metrics are recorded once, at the end
        self.last = b""  # the last chunk sent: where a broken stream's error tail must start
        # StreamResponse.prepare() has sent the head already (only web.Response holds it
        # back); make sure of it, since the body below goes past aiohttp's writer.
        request.writer.send_headers()

    @property
    def complete(self) -> bool:
        """The body went out as its head announced: chunked, or exactly its length."""
        return self._length is None or (self.sent == self._length and not self.overrun)

    def cut_short(self) -> None:
        """End the response without ending its body: the client gets what was sent, then
        the connection closes, so its HTTP library reports an incomplete body rather than
        taking a truncated one for the whole."""
        if self._transport is not None:
            self._transport.close()  # close() still flushes what is buffered; abort() would not

    def write(self, chunk: bytes) -> bool:
        transport = self._transport
        if transport is None or transport.is_closing():
            return False  # the client left; drain() says so
        if not chunk:
            return True  # an empty chunk would end a chunked body
        if self._chunked:
            transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        else:
            if self._length is not None and self.sent + len(chunk) > self._length:
                self.overrun = True
                chunk = chunk[: self._length - self.sent]
            transport.write(chunk)
        self.sent += len(chunk)
        self.last = chunk
        return transport.get_write_buffer_size() < self.HIGH_WATER

    async def drain(self) -> None:
        if self._transport is None or self._transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        try:
            await self._request.writer.drain()
        except ConnectionError as exc:  # aiohttp wakes a waiting drain with ConnectionError("Connection lost")
            raise ConnectionResetError(f"the client closed the connection: {exc}") from None


class _Discard:
    """A sink for a body nobody will see (a HEAD answer)."""

    def write(self, chunk: bytes) -> bool:
        return True

    async def drain(self) -> None:
        return None


async def answer_and_close(request: web.Request, response: web.Response) -> web.Response:
    """Send `response`, then close the connection: the rest of the request body is not
    wanted (aiohttp would otherwise keep reading it for up to 10 s after the answer)."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    if request.transport is not None:
        request.transport.close()  # flushes the answer first
    return response


class Forwarder:
    """The `/ollama/*` handler: one instance per app, holding the backend and its timeout."""

    def __init__(self, backend: Backend, first_byte_timeout: float, body_timeout: float = 60.0) -> None:
        self.backend = backend
        self.first_byte_timeout = first_byte_timeout
        self.body_timeout = body_timeout

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = forwarded_path(request)
        if path is None:  # only routed here for /ollama and below
            raise web.HTTPNotFound()
        family = api_family(path)
        exchange: Exchange = request[EXCHANGE]
        # Request bodies are bounded by the app's client_max_size and in time (a slow
        # drip never trips an idle timeout); Modal needs the whole body as a call
        # argument anyway. Response bodies are never buffered.
        try:
            async with asyncio.timeout(self.body_timeout):
                body = await request.read()
        except TimeoutError:
            exchange.error = "body_timeout"
            return await answer_and_close(request, error_response(408, f"the request body did not arrive within {self.body_timeout:.0f}s", family))
        except RequestPayloadError as exc:  # its framing broke (proxy.server.GatewayRequestHandler)
            exchange.error = "bad_request"
            return await answer_and_close(request, error_response(400, str(exc), family))
        exchange.model = model_of(body, request.content_type)
        frame = request_frame(request.method, path, upstream_request_headers(request.headers.items()), body)
        try:
            async with asyncio.timeout(self.first_byte_timeout):
                upstream = await self.backend.open(frame)
        except BackendUnavailable as exc:
            exchange.error = "backend_unavailable"
            return error_response(503, str(exc), family)
        except TimeoutError:
            exchange.error = "first_byte_timeout"
            message = f"the backend sent nothing within {self.first_byte_timeout:.0f}s (a model may still be loading)"
            return error_response(504, message, family, {"Retry-After": "10"})
        except UpstreamBroken as exc:
            exchange.error = "empty_backend_response"
            return error_response(502, str(exc), family)
        except Exception as exc:  # noqa: BLE001 (anything from the transport is a bad gateway)
            log.exception("backend failed before the response head")
            exchange.error = "backend_failed"
            return error_response(502, f"the backend failed: {type(exc).__name__}", family)
        try:
            return await self._relay(request, upstream, exchange)
        finally:
            # Releases the backend response on every exit, including a client that left
            # (the handler is cancelled): that is what stops generation upstream.
            await upstream.aclose()

    async def _relay(self, request: web.Request, upstream: BackendResponse, exchange: Exchange) -> web.StreamResponse:
        exchange.first_byte = time.perf_counter()
        exchange.status = upstream.status
        exchange.served_by = upstream.served_by
        response = web.StreamResponse(status=upstream.status)
        for name, value in client_response_headers(upstream.headers):
            response.headers.add(name, value)
        # Keep Ollama's framing: a body with a declared length keeps it (HEAD answers too);
        # only bodies of unknown length go out chunked.
        response.content_length = body_length(upstream.headers)
        # Tell intermediaries such as nginx not to buffer the stream.
        response.headers["X-Accel-Buffering"] = "no"
        await response.prepare(request)
        if request.method == "HEAD":
            # A HEAD answer has no body, whatever the backend sends. Reading it to its
            # end (it is empty) lets a remote backend finish without a stop.
            await upstream.send_body(_Discard())
            await response.write_eof()
            return response

        body = ClientBody(request, response)
        try:
            await upstream.send_body(body)
            broken = None if body.complete else f"the backend's body did not match its Content-Length ({body.sent} bytes)"
        except (ConnectionResetError, asyncio.CancelledError):
            exchange.client_left = True
            raise  # the caller closes the backend response
        except Exception as exc:  # noqa: BLE001
            broken = f"upstream stream ended early: {exc}"
        finally:
            exchange.bytes_out = body.sent
        if broken is not None:
            log.warning("stream from the backend broke: %s", broken)
            exchange.error = "stream_broken"
            # NDJSON and SSE can say so in band (as Ollama does), unless the length is fixed.
            tail = stream_error_tail(response.content_type, broken, body.last) if response.content_length is None else b""
            if not tail:
                body.cut_short()
                return response  # aiohttp's own write_eof then finds the connection closed
            body.write(tail)
            exchange.bytes_out = body.sent
        await response.write_eof()
        return response
