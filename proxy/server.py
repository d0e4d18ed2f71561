"""Serving the gateway app: in a background thread (Modal) or in the foreground (local).

Both run the app on `GatewayRunner`, whose connections are aiohttp's `RequestHandler`
with two repairs (see `GatewayRequestHandler`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler, RequestPayloadError, _ErrInfo

from proxy.errors import error_response

log = logging.getLogger(__name__)

# Cancel a handler when its client disconnects: that is how "stop" reaches Ollama
# even while no chunk is flowing. Request bodies are never inflated: the gateway refuses
# a Content-Encoding before reading (Ollama takes none), so a gzip bomb costs nothing.
RUNNER_OPTIONS = {"handler_cancellation": True, "access_log": None, "auto_decompress": False}

# How long a stop (Ctrl-C, SIGTERM) waits for open streams to end: aiohttp's default.
SHUTDOWN_TIMEOUT = 60.0

# aiohttp's default listen backlog (128) refuses connections when a burst of streams
# opens at once (seen in bench/ at 2,000 streams).
LISTEN_BACKLOG = 4096


# Collect the young generation every 100k net allocations instead of 700: relaying a
# token allocates a few dozen objects, and under 200 streams the default thresholds ran
# collections often enough to show in the inter-token gap p99 (bench/HISTORY.md).
# The two older generations every third collection of the one below them: a stream
# abandoned by its client leaves reference cycles (the cancelled handler's exception and
# traceback, futures, the upstream connection and its parser), and the cycles of streams
# still open at a young collection move on to the older generations. With (50, 1000)
# there a full collection never came and the RSS grew with every abandoned stream;
# with (2, 2) it levels off (bench/SOAK.md, bench/HISTORY.md section 6). In the bench's
# steady phase no collection runs at all (the net count stays under 100k), so the speed
# those thresholds bought is kept.
GC_THRESHOLDS = (100_000, 2, 2)


def settle_heap() -> None:
    """Freeze what start-up allocated, so the collector stops rescanning it, and collect
    the young generation less often: full collections of the whole heap under load paused
    every stream for tens of ms. Full collections still run, over what is not frozen."""
    gc.collect()
    gc.freeze()
    # CPython (up to 3.13) skips a due full collection until the objects moved into the
    # oldest generation since the last one exceed a quarter of what that one left there.
    # The collection above counted start-up's objects, which are frozen now and never
    # scanned again; this one (cheap: only what was allocated since) counts what full
    # collections actually scan, so the first is not held back by start-up's size.
    gc.collect()
    gc.set_threshold(*GC_THRESHOLDS)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed (Linux, macOS): less CPU per relayed chunk than asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def parser_reason(exc: HttpProcessingError) -> str:
    """The first line of a parser error: what was wrong, never the raw bytes that
    follow it in aiohttp's message (a header line may hold a key)."""
    return (exc.message.splitlines() or [""])[0].strip().rstrip(":")[:200] or "malformed request"


class GatewayRequestHandler(RequestHandler):
    """aiohttp's connection handler, with three repairs for input from the internet.

    - aiohttp 3.14's C parser (`_http_parser.pyx`, `feed_data`) drops the body it was
      filling when a request's chunked framing breaks mid-body: the handler reading it
      waits forever, holding its buffers and connection. Here the body fails at once
      (`RequestPayloadError`), so the forwarder answers 400 and lets go.
    - The same parser hands a chunked body's trailer fields to the *next* request on the
      connection as headers (a trailer's name and value are only processed when the next
      message's first header arrives): a trailer `X-API-Key: k1` let a keyless request
      in. A request with a chunked body is marked to close its connection, so whatever
      answers it (a handler, a refusal, an Expect handler, aiohttp itself) ends the
      connection and no next request is read from it.
    - The parser's own 400s (bad request line, bad header) become one JSON error and one
      log line with the reason, instead of a text/plain page that echoes the raw bytes
      and a traceback (or, for a bad request line, nothing at all).
    """

    _filling: StreamReader | None = None  # the body the parser is writing into

    def data_received(self, data: bytes) -> None:
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) == queued:
            return
        for index in range(queued, len(self._messages)):
            message, payload = self._messages[index]
            if not isinstance(message, _ErrInfo):
                self._filling = payload
                if message.chunked and not message.should_close:
                    self._messages[index] = (message._replace(should_close=True), payload)
            elif self._filling is not None and not self._filling.is_eof():
                self._filling.set_exception(RequestPayloadError(f"malformed request body: {parser_reason(message.exc)}"))
                self._filling.feed_eof()  # nothing more comes: aiohttp must not linger reading it

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        reason = parser_reason(exc)
        log.info("refused a malformed request from %s: %d %s", request.remote, status, reason)
        response = error_response(status, f"malformed request: {reason}")
        response.force_close()
        return response


class GatewayServer(web.Server):
    def __call__(self) -> RequestHandler:
        return GatewayRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An AppRunner whose connections are `GatewayRequestHandler`s."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return GatewayServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )


class ListenError(OSError):
    """The gateway cannot listen where it was asked to; the message says what to change."""


def listen_failure(exc: OSError, host: str, port: int) -> str:
    """One line for a failed bind, naming the option to change (never a traceback)."""
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else os.strerror(exc.errno)
        return f"cannot listen on --host {host}: {reason}: use an address of this machine, such as 127.0.0.1 or 0.0.0.0"
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} is already in use on {host}: stop what uses it, or pick another with --port"
    if exc.errno == errno.EACCES:
        return f"no permission to listen on port {port}: pick one above 1023 with --port"
    return f"cannot listen on {host}:{port} ({os.strerror(exc.errno) if exc.errno else exc}): check --host and --port"


async def start_site(app: web.Application, host: str, port: int, **options) -> tuple[GatewayRunner, web.TCPSite]:
    """Serve `app` on host:port with the gateway's runner options; return once listening.
    Raises ListenError when it cannot (a busy port, an unknown host)."""
    runner = GatewayRunner(app, **{**RUNNER_OPTIONS, **options})
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ListenError(listen_failure(exc, host, port)) from exc
    except BaseException:
        await runner.cleanup()
        raise
    return runner, site


def requests_in_progress(runner: web.AppRunner) -> int:
    """Requests the server is answering right now (streams a stop has to drain)."""
    server = runner.server
    return 0 if server is None else sum(1 for handler in server.connections if handler._request_in_progress)


def run_forever(
    app: web.Application, host: str, port: int, on_ready: Callable[[], None], on_stopping: Callable[[int], None] | None = None
) -> None:
    """Serve `app` in the foreground (local mode) until Ctrl-C or SIGTERM, then clean up
    (the app's on_cleanup hooks run: they stop an Ollama we started).

    The first Ctrl-C (or SIGTERM) lets open streams end (up to SHUTDOWN_TIMEOUT), after
    telling `on_stopping` how many there are; a second Ctrl-C cuts them and stops at once.
    Both are the event loop's own signal handlers, so they act however busy the loop is.
    Raises ListenError if it cannot listen.
    """

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stopping, hurry = asyncio.Event(), asyncio.Event()

        def interrupted() -> None:
            (hurry if stopping.is_set() else stopping).set()

        with contextlib.suppress(NotImplementedError):  # Windows: asyncio.Runner's KeyboardInterrupt instead
            loop.add_signal_handler(signal.SIGINT, interrupted)
            loop.add_signal_handler(signal.SIGTERM, stopping.set)
        runner, _ = await start_site(app, host, port, shutdown_timeout=SHUTDOWN_TIMEOUT)
        try:
            on_ready()
            await stopping.wait()
            if on_stopping is not None:
                on_stopping(requests_in_progress(runner))
        finally:
            # The app's on_cleanup hooks run either way (they stop an Ollama we started).
            cleanup = asyncio.ensure_future(runner.cleanup())
            second = asyncio.ensure_future(hurry.wait())
            await asyncio.wait({cleanup, second}, return_when=asyncio.FIRST_COMPLETED)
            second.cancel()
            if not cleanup.done():  # a second Ctrl-C: cut the open streams, then finish cleaning up
                for handler in list(runner.server.connections if runner.server else ()):
                    if handler.transport is not None:
                        handler.transport.abort()
                await cleanup

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        try:
            runner.run(main())
        except KeyboardInterrupt:  # asyncio.Runner cancelled main(), which cleaned up
            pass


def serve_in_thread(make_app: Callable[[], web.Application], host: str, port: int, ready_timeout: float = 30.0) -> threading.Thread:
    """Run the app on its own event loop in a daemon thread; return once it listens.

    Modal's `@modal.web_server` wants a function that starts a server and returns;
    a thread of the same process (not a subprocess) can still call Modal objects.
    """
    ready = threading.Event()
    failure: list[BaseException] = []

    async def main() -> None:
        await start_site(make_app(), host, port)
        settle_heap()
        ready.set()
        await asyncio.Event().wait()  # serve until the process ends

    def run() -> None:
        try:
            # asyncio's own loop here: this thread also awaits Modal's client (its own loop
            # in another thread), and uvloop was not verified against that on Modal.
            asyncio.run(main())
        except BaseException as exc:  # reported to the starting thread below
            failure.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="gateway", daemon=True)
    thread.start()
    if not ready.wait(ready_timeout):
        raise RuntimeError(f"gateway did not start listening on {host}:{port} within {ready_timeout}s")
    if failure:
        raise RuntimeError(f"gateway failed to start on {host}:{port}") from failure[0]
    return thread
