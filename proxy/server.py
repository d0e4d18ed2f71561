"""Serving the gateway app: in a background thread (Modal) or in the foreground (local)."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import Callable

from aiohttp import http_exceptions, web

# Cancel a handler when its client disconnects: that is how "stop" reaches Ollama
# even while no chunk is flowing.
RUNNER_OPTIONS = {"handler_cancellation": True, "access_log": None}

# aiohttp's default listen backlog (128) refuses connections when a burst of streams
# opens at once (seen in bench/ at 2,000 streams).
LISTEN_BACKLOG = 4096


# Collect the young generation every 100k net allocations instead of 700: relaying a
# token allocates a few dozen objects, and under 200 streams the default thresholds ran
# collections often enough to show in the inter-token gap p99 (bench/HISTORY.md).
GC_THRESHOLDS = (100_000, 50, 1000)


def settle_heap() -> None:
    """Freeze what start-up allocated, so the collector stops rescanning it, and collect
    less often: full collections under load paused every stream for tens of ms."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed (Linux, macOS): less CPU per relayed chunk than asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class MalformedRequestsInOneLine(logging.Filter):
    """aiohttp logs a full traceback for every malformed request it refuses with a 4xx.
    From the internet that is noise (and an easy way to flood the logs): keep one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, http_exceptions.HttpProcessingError):
            record.msg, record.args = "refused a malformed request: %s", (str(exc).splitlines()[0][:200],)
            record.exc_info, record.exc_text, record.levelno, record.levelname = None, None, logging.INFO, "INFO"
        return True


def quiet_malformed_requests() -> None:
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestsInOneLine) for f in logger.filters):
        logger.addFilter(MalformedRequestsInOneLine())


def serve_in_thread(make_app: Callable[[], web.Application], host: str, port: int, ready_timeout: float = 30.0) -> threading.Thread:
    """Run the app on its own event loop in a daemon thread; return once it listens.

    Modal's `@modal.web_server` wants a function that starts a server and returns;
    a thread of the same process (not a subprocess) can still call Modal objects.
    """
    ready = threading.Event()
    failure: list[BaseException] = []

    async def main() -> None:
        runner = web.AppRunner(make_app(), **RUNNER_OPTIONS)
        await runner.setup()
        await web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG).start()
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
