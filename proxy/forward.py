"""Forwarding one client request through a `Backend`, streaming the answer back."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from aiohttp import hdrs, web
from aiohttp.web import RequestPayloadError

from backend.routes import route_of
from backend.wire import BackendPreempted, BackendUnavailable, RequestFrame, UpstreamBroken, request_frame
from proxy.bodies import stream_content_type
from proxy.encodings import BadEncoding, BodyTooLarge, inflate
from proxy.errors import error_response, keepalive_bytes, stream_error_tail
from proxy.headers import body_length, client_response_headers, upstream_request_headers
from proxy.observe import Exchange
from proxy.paths import route_api_family, upstream_path
from proxy.policy import LISTINGS, ModelRules, filter_listing, reported_tokens
from proxy.reading import Reading, read_request, reads_a_model
from proxy.transport import Backend, BackendResponse, read_body

log = logging.getLogger(__name__)

EXCHANGE = web.RequestKey("exchange", Exchange)  # filled here, recorded by the observe middleware
MODEL_RULES = web.RequestKey("model_rules", ModelRules)  # set by the guard for a key with an allowlist
KEEPALIVE_INTERVAL = 5.0  # seconds between keep-alive bytes while a stream waits for the backend
LISTING_LIMIT = 8 * 1024 * 1024  # a model listing larger than this is not filtered but refused
READ_INLINE_LIMIT = 256 * 1024  # a body larger than this is read in _BODY_READER (at most ~0.4 µs of CPU a byte)
# One thread for all large bodies: they queue, and the event loop always keeps its share.
_BODY_READER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="body-reader")
# Ollama reads at most 20 MB of a decompressed body (middleware/openai.go maxDecompressedBodySize).
MAX_DECOMPRESSED = 20 * 1024 * 1024
_PATH = web.RequestKey("upstream_path", str)
_ROUTE = web.RequestKey("upstream_route", str)


def forwarded_path(request: web.Request) -> str | None:
    """Where this request lands on Ollama (None: not forwarded). Computed once per request."""
    if _PATH not in request:
        request[_PATH] = upstream_path(request.rel_url.raw_path, request.rel_url.raw_query_string) or ""
    return request[_PATH] or None


def forwarded_route(request: web.Request) -> str | None:
    """The route Ollama will match for `forwarded_path` (`route_of`): what every rule is
    decided on. Computed once per request."""
    if _ROUTE not in request:
        path = forwarded_path(request)
        request[_ROUTE] = route_of(path) if path else ""
    return request[_ROUTE] or None


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
        self.before_last = b""  # with `last`, where Ollama's final token counts are
        self.route = forwarded_route(request) or ""  # whose API's form an in-band error takes
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
        self.before_last, self.last = self.last, chunk
        return transport.get_write_buffer_size() < self.HIGH_WATER

    def write_filler(self, chunk: bytes) -> bool:
        """Keep-alive bytes: sent like body bytes, but never where an error tail would
        have to start a line of its own (`last` stays as it was)."""
        before_last, last = self.before_last, self.last
        room = self.write(chunk)
        self.before_last, self.last = before_last, last
        return room

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
    """The `/ollama/*` handler: one instance per app, holding the backend and its timeouts.

    `first_byte_timeout` bounds the wait for the backend's response head (on Modal at
    most 140 s: Modal answers a web request that has not started within 150 s with a
    redirect). A streaming request whose head has not come within `early_head_s` gets
    its head from the gateway instead, then keep-alive bytes until the backend's first
    bytes: its wait is bounded by `stream_timeout` (OLLAMA_TIMEOUT) alone.
    """

    def __init__(
        self,
        backend: Backend,
        first_byte_timeout: float,
        body_timeout: float = 60.0,
        early_head_s: float | None = None,
        stream_timeout: float | None = None,
        max_body: int = 100 * 1024 * 1024,
    ) -> None:
        self.backend = backend
        self.first_byte_timeout = first_byte_timeout
        self.body_timeout = body_timeout
        self.max_body = max_body  # GATEWAY_MAX_BODY_MB: also the bound of a decompressed body
        self.early_head_s = early_head_s  # None: streams wait like any request
        self.stream_timeout = stream_timeout or first_byte_timeout

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = forwarded_path(request)
        if path is None:  # only routed here for /ollama and below
            raise web.HTTPNotFound()
        route = forwarded_route(request)
        family = route_api_family(route)
        exchange: Exchange = request[EXCHANGE]
        # Request bodies are bounded by the app's client_max_size and in time (a slow
        # drip never trips an idle timeout); Modal needs the whole body as a call
        # argument anyway. Response bodies are never buffered.
        # The guard let a Content-Encoding through only where Ollama takes one (proxy.encodings):
        # the body is inflated as it arrives, and Ollama gets (and every rule reads) the decoded body.
        encoding = request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
        inflated_limit = min(self.max_body, MAX_DECOMPRESSED)
        try:
            if encoding != "identity":
                async with asyncio.timeout(self.body_timeout):
                    body = await inflate(request.content.iter_any(), encoding, inflated_limit)
            elif request.content.is_eof():  # the whole body came with the head: nothing to wait for
                body = await request.read()
            else:
                async with asyncio.timeout(self.body_timeout):
                    body = await request.read()
        except BodyTooLarge as exc:  # only inflating raises it
            exchange.error = "body_too_large"
            why = "GATEWAY_MAX_BODY_MB" if inflated_limit == self.max_body else "decompressed: Ollama reads no more"
            message = f"request body over {inflated_limit // (1024 * 1024)} MB ({why}): {exc}"
            return await answer_and_close(request, error_response(413, message, family))
        except BadEncoding as exc:
            exchange.error = "bad_request"
            return await answer_and_close(request, error_response(400, str(exc), family))
        except TimeoutError:
            exchange.error = "body_timeout"
            return await answer_and_close(request, error_response(408, f"the request body did not arrive within {self.body_timeout:.0f}s", family))
        except RequestPayloadError as exc:  # its framing broke (proxy.server.GatewayRequestHandler)
            exchange.error = "bad_request"
            return await answer_and_close(request, error_response(400, str(exc), family))
        # The one reading every rule below uses; a large body's in a worker thread, so the
        # event loop (health checks, every other stream) never waits on it.
        if len(body) <= READ_INLINE_LIMIT:
            reading = read_request(request.method, route, body)
        else:
            reading = await asyncio.get_running_loop().run_in_executor(_BODY_READER, read_request, request.method, route, body)
        exchange.model = reading.model
        headers = upstream_request_headers(request.headers.items())
        if encoding != "identity":
            headers = [(name, value) for name, value in headers if name.lower() != "content-encoding"]
        frame = request_frame(request.method, path, headers, body)
        frame["model"] = reading.model  # the pool router routes on it
        rules = request.get(MODEL_RULES)
        listing_rules = None  # set for a model listing that must show only the key's models
        if rules is not None:
            if reading.error is not None:
                # Ollama's 400 to give, for certain; but the allowlist cannot be decided on it.
                exchange.error = "bad_request"
                return error_response(400, reading.error, family)
            refusal = self._model_refusal(rules, reading, exchange.key) if reads_a_model(request.method, route) else None
            if refusal is not None:
                exchange.error = "model_not_allowed"
                return error_response(403, refusal, family)
            if request.method == "GET" and route in LISTINGS:
                listing_rules = rules
            elif request.method == "HEAD" and route == "/api/tags":  # Ollama's one listing with a HEAD
                listing_rules = rules
                frame["method"] = "GET"  # the head of the filtered listing
        streams_as = stream_content_type(request.method, route, reading)
        if streams_as is not None and self.early_head_s is not None and self.early_head_s < self.stream_timeout:
            return await self._stream(request, frame, streams_as, family, exchange)
        try:
            async with asyncio.timeout(self.first_byte_timeout):
                upstream = await self.backend.open(frame)
        except Exception as exc:  # noqa: BLE001 (each kind becomes its own answer)
            return self._no_head(exc, family, exchange, self.first_byte_timeout)
        if listing_rules is not None and upstream.status == 200:
            return await self._relay_listing(request, upstream, exchange, listing_rules, route)
        return await self._relay(request, upstream, exchange)

    async def _relay_listing(self, request: web.Request, upstream: BackendResponse, exchange: Exchange, rules: ModelRules, route: str) -> web.StreamResponse:
        """A model listing with only the models the request's key may use (re-encoded)."""
        try:
            listing = await read_body(upstream, LISTING_LIMIT)
        finally:
            await upstream.aclose()
        exchange.reruns = upstream.reruns
        filtered = filter_listing(route, listing, rules)
        if filtered is None or len(listing) >= LISTING_LIMIT:
            exchange.error = "listing_unreadable"
            return error_response(502, "the model listing could not be read to filter it for this key", route_api_family(route))
        exchange.first_byte = exchange.backend_head = time.perf_counter()
        exchange.status = 200
        exchange.answered_by(upstream)
        content_type = next((v for k, v in upstream.headers if k.lower() == "content-type"), "application/json")
        exchange.bytes_out = 0 if request.method == "HEAD" else len(filtered)
        return web.Response(body=filtered, headers={"Content-Type": content_type})  # aiohttp sends no body for HEAD

    @staticmethod
    def _model_refusal(rules: ModelRules, reading: Reading, key: str) -> str | None:
        """Why this key may not send this request (None: it may). Every model the request
        uses is checked, as Ollama will read them; one the gateway cannot tell is refused.
        (The guard has already refused the routes whose models the gateway does not read.)"""
        if not reading.models:
            return f"the key {key!r} may use only some models, and this request names none the gateway can read"
        forbidden = next((name for name in reading.models if not rules.allows(name)), None)
        return None if forbidden is None else f"the key {key!r} may not use the model {forbidden[:200]!r}"

    def _no_head(self, exc: BaseException, family: str, exchange: Exchange, waited: float) -> web.Response:
        """The answer when the backend gave no response head."""
        status, message, headers = _why_no_head(exc, exchange, waited)
        return error_response(status, message, family, headers)

    async def _stream(self, request: web.Request, frame: RequestFrame, content_type: str, family: str, exchange: Exchange) -> web.StreamResponse:
        """A streaming request: relayed as usual if the backend's head comes within
        `early_head_s`; otherwise the gateway sends the head itself and keep-alive bytes
        until the backend answers (`_EarlyHead`).

        The head lets a cold start outlast Modal's 150 s limit on a response's start and
        lets Modal's proxy see a client that leaves. An error that comes instead of the
        stream is told in band, as Ollama tells one mid-stream. A warm backend costs a
        timer here, no task: the backend is awaited directly, as for any request.
        """
        early = _EarlyHead(request, content_type, exchange)
        timer = asyncio.get_running_loop().call_later(self.early_head_s, early.start)
        try:
            async with asyncio.timeout(self.stream_timeout):
                upstream = await self.backend.open(frame)
        except Exception as exc:  # noqa: BLE001 (each kind becomes its own answer)
            timer.cancel()
            if not early.started:
                return self._no_head(exc, family, exchange, self.stream_timeout)
            status, message, _ = _why_no_head(exc, exchange, self.stream_timeout)
            response, body = await early.stop()
            return await self._end_in_band(response, body, message, status, exchange)
        except BaseException:  # cancelled: the client left (RemoteBackend.open has sent the stop)
            timer.cancel()
            await early.abandon()
            raise
        timer.cancel()
        if not early.started:
            return await self._relay(request, upstream, exchange)
        try:
            response, body = await early.stop()
            exchange.backend_head = time.perf_counter()
            exchange.answered_by(upstream)
            if not 200 <= upstream.status < 300:  # a 2xx stream or nothing: the client has a 200 head
                exchange.error = "backend_error_in_band"
                message = await read_error_message(upstream)
                return await self._end_in_band(response, body, message, upstream.status, exchange)
            return await self._send_body(response, body, upstream, exchange)
        except (ConnectionResetError, asyncio.CancelledError):
            exchange.client_left = True
            raise
        finally:
            await upstream.aclose()

    async def _end_in_band(self, response: web.StreamResponse, body: ClientBody, message: str, status: int, exchange: Exchange) -> web.StreamResponse:
        body.write(stream_error_tail(response.content_type, message, body.last, status, route=body.route))
        exchange.bytes_out = body.sent
        await response.write_eof()
        return response

    async def _relay(self, request: web.Request, upstream: BackendResponse, exchange: Exchange) -> web.StreamResponse:
        try:
            exchange.first_byte = exchange.backend_head = time.perf_counter()
            exchange.status = upstream.status
            exchange.answered_by(upstream)
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
                exchange.reruns = upstream.reruns
                await response.write_eof()
                return response
            return await self._send_body(response, ClientBody(request, response), upstream, exchange)
        finally:
            # Releases the backend response on every exit, including a client that left
            # (the handler is cancelled): that is what stops generation upstream.
            await upstream.aclose()

    async def _send_body(self, response: web.StreamResponse, body: ClientBody, upstream: BackendResponse, exchange: Exchange) -> web.StreamResponse:
        kind, unseen = "stream_broken", 0
        try:
            await upstream.send_body(body)
            broken = None if body.complete else f"the backend's body did not match its Content-Length ({body.sent} bytes)"
            if broken is None and upstream.status == 200:
                # Constant work per answer: only its last two chunks are read, at the end.
                counted = reported_tokens(body.before_last + body.last)
                if counted is not None:
                    exchange.prompt_tokens, exchange.completion_tokens = counted
        except (ConnectionResetError, asyncio.CancelledError):
            exchange.client_left = True
            raise  # the caller closes the backend response
        except BackendPreempted as exc:
            # Told in band, never spliced (proxy.transport); unless all of a declared length
            # went out: the preemption came after the end of the answer, which is whole.
            if response.content_length is not None and body.complete:
                broken, unseen = None, 1
            else:
                broken, kind = str(exc), "backend_preempted"
        except Exception as exc:  # noqa: BLE001
            broken = f"upstream stream ended early: {exc}"
        finally:
            exchange.bytes_out = body.sent
            exchange.reruns = upstream.reruns + unseen
        if broken is not None:
            log.warning("stream from the backend broke: %s", broken)
            exchange.error = kind
            # NDJSON and SSE can say so in band (as Ollama does), unless the length is fixed.
            tail = stream_error_tail(response.content_type, broken, body.last, route=body.route) if response.content_length is None else b""
            if not tail:
                body.cut_short()
                return response  # aiohttp's own write_eof then finds the connection closed
            body.write(tail)
            exchange.bytes_out = body.sent
        await response.write_eof()
        return response


def _why_no_head(exc: BaseException, exchange: Exchange, waited: float) -> tuple[int, str, dict[str, str] | None]:
    """(status, message, headers) for a backend that gave no response head: the gateway's
    error answer, or the in-band ending of a stream that already has the gateway's head."""
    if isinstance(exc, BackendUnavailable):
        exchange.error = "backend_unavailable"
        return 503, str(exc), None
    if isinstance(exc, TimeoutError):
        exchange.error = "first_byte_timeout"
        return 504, f"the backend sent nothing within {waited:.0f}s (a model may still be loading)", {"Retry-After": "10"}
    if isinstance(exc, UpstreamBroken):
        exchange.error = "empty_backend_response"
        return 502, str(exc), None
    log.error("backend failed before the response head", exc_info=exc)
    exchange.error = "backend_failed"
    return 502, f"the backend failed: {type(exc).__name__}", None


class _EarlyHead:
    """The head and keep-alive bytes the gateway sends for a stream whose backend is slow.

    `start()` is a timer callback: it begins a task that sends the head, then a keep-alive
    filler every KEEPALIVE_INTERVAL. `stop()` ends that task and hands over the response
    and its body sink, for the backend's bytes or an in-band error.
    """

    def __init__(self, request: web.Request, content_type: str, exchange: Exchange) -> None:
        # Only plain references: a warm stream never starts this, and must not pay for it.
        self.request = request
        self.content_type = content_type
        self.exchange = exchange
        self.body: ClientBody | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self.task is not None

    def start(self) -> None:
        self.response = web.StreamResponse(status=200, headers={"Content-Type": self.content_type, "X-Accel-Buffering": "no"})
        self._stopping = asyncio.Event()
        self.task = asyncio.ensure_future(self._keep_alive())

    async def _keep_alive(self) -> None:
        self.exchange.early_head = True
        self.exchange.first_byte = time.perf_counter()
        self.exchange.status = 200
        await self.response.prepare(self.request)
        self.body = ClientBody(self.request, self.response)
        filler = keepalive_bytes(self.content_type, self.body.route)
        while True:
            try:
                async with asyncio.timeout(KEEPALIVE_INTERVAL):
                    await self._stopping.wait()
                return
            except TimeoutError:
                if not self.body.write_filler(filler):
                    await self.body.drain()  # raises ConnectionResetError if the client left

    async def stop(self) -> tuple[web.StreamResponse, ClientBody]:
        self._stopping.set()
        assert self.task is not None
        await self.task
        assert self.body is not None
        return self.response, self.body

    async def abandon(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


async def read_error_message(upstream: BackendResponse) -> str:
    """The message of Ollama's error answer: `{"error": "..."}` natively,
    `{"error": {"message": ...}}` on /v1, else its text."""
    try:
        body = await read_body(upstream, 64 * 1024)  # Ollama's errors are small
    except Exception as exc:  # noqa: BLE001
        return f"the backend answered {upstream.status} and then failed: {exc}"
    text = body.decode("utf-8", "replace").strip()
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError, RecursionError):
        error = None
    if isinstance(error, dict):
        error = error.get("message")
    return error if isinstance(error, str) and error else (text or f"the backend answered {upstream.status}")
