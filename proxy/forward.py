"""Forwarding one client request through a `Backend`, streaming the answer back."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from backend.wire import BackendUnavailable, Frame, request_frame
from proxy.errors import error_response, stream_error_tail
from proxy.headers import client_response_headers, upstream_request_headers
from proxy.observe import Exchange, model_of
from proxy.paths import api_family, upstream_path
from proxy.transport import Backend

log = logging.getLogger(__name__)

EXCHANGE = web.RequestKey("exchange", Exchange)  # filled here, recorded by the observe middleware
_PATH = web.RequestKey("upstream_path", str)


def forwarded_path(request: web.Request) -> str | None:
    """Where this request lands on Ollama (None: not forwarded). Computed once per request."""
    if _PATH not in request:
        request[_PATH] = upstream_path(request.rel_url.raw_path, request.rel_url.raw_query_string) or ""
    return request[_PATH] or None


class Forwarder:
    """The `/ollama/*` handler: one instance per app, holding the backend and its timeout."""

    def __init__(self, backend: Backend, first_byte_timeout: float) -> None:
        self.backend = backend
        self.first_byte_timeout = first_byte_timeout

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = forwarded_path(request)
        if path is None:  # only routed here for /ollama and below
            raise web.HTTPNotFound()
        family = api_family(path)
        exchange: Exchange = request[EXCHANGE]
        # Request bodies are bounded by the app's client_max_size; Modal needs the
        # whole body as a call argument anyway. Response bodies are never buffered.
        body = await request.read()
        exchange.model = model_of(body, request.content_type)
        frames = self.backend.stream(
            request_frame(request.method, path, upstream_request_headers(request.headers.items()), body)
        )
        try:
            return await self._relay(request, frames, family, exchange)
        finally:
            # Closes the backend stream on every exit, including a client that left
            # (the handler is cancelled): that is what stops generation upstream.
            await frames.aclose()

    async def _relay(
        self, request: web.Request, frames: AsyncIterator[Frame], family: str, exchange: Exchange
    ) -> web.StreamResponse:
        try:
            async with asyncio.timeout(self.first_byte_timeout):
                head = await anext(frames)
        except BackendUnavailable as exc:
            exchange.error = "backend_unavailable"
            return error_response(503, str(exc), family)
        except TimeoutError:
            exchange.error = "first_byte_timeout"
            message = f"the backend sent nothing within {self.first_byte_timeout:.0f}s (a model may still be loading)"
            return error_response(504, message, family, {"Retry-After": "10"})
        except StopAsyncIteration:
            exchange.error = "empty_backend_response"
            return error_response(502, "the backend closed the stream without a response", family)
        except Exception as exc:  # noqa: BLE001 (anything from the transport is a bad gateway)
            log.exception("backend failed before the response head")
            exchange.error = "backend_failed"
            return error_response(502, f"the backend failed: {type(exc).__name__}", family)

        exchange.first_byte = time.perf_counter()
        exchange.status = head["status"]
        response = web.StreamResponse(status=head["status"])
        for name, value in client_response_headers(head["headers"]):
            response.headers.add(name, value)
        # Tell intermediaries such as nginx not to buffer the stream.
        response.headers["X-Accel-Buffering"] = "no"
        await response.prepare(request)
        if request.method == "HEAD":
            # A HEAD answer has no body, whatever the backend sends. Reading the stream
            # to its end (it is empty) lets a remote backend finish without a stop.
            async for _ in frames:
                pass
            await response.write_eof()
            return response

        last = b""  # the last chunk sent: where a broken stream's error tail must start
        sent = 0  # a plain int per chunk; metrics are recorded once, at the end
        try:
            async for chunk in frames:
                await response.write(chunk)
                sent += len(chunk)
                last = chunk
        except (ConnectionResetError, asyncio.CancelledError):
            exchange.client_left = True
            raise  # the caller closes the backend stream
        except Exception as exc:  # noqa: BLE001
            log.warning("stream from the backend broke: %s", exc)
            exchange.error = "stream_broken"
            tail = stream_error_tail(response.content_type, f"upstream stream ended early: {exc}", last)
            if tail:
                await response.write(tail)
                sent += len(tail)
        finally:
            exchange.bytes_out = sent
        await response.write_eof()
        return response
