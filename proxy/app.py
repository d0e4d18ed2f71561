"""The gateway's aiohttp application."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from config import APP_NAME, Settings
from proxy.errors import error_response
from proxy.forward import Forwarder
from proxy.paths import PREFIX, api_family, upstream_path
from proxy.transport import Backend

log = logging.getLogger(__name__)

__version__ = "0.1.0"

FORWARDED_METHODS = ("GET", "HEAD", "POST", "DELETE")
BACKEND_KEY = web.AppKey("backend", Backend)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _family(request: web.Request) -> str:
    path = upstream_path(request.rel_url.raw_path)
    return api_family(path) if path else "ollama"


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error the gateway makes itself is JSON, never an HTML page or a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")}
        return error_response(exc.status, exc.reason if exc.text is None else exc.text.removeprefix(f"{exc.status}: "), _family(request), headers)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.rel_url.raw_path)
        return error_response(500, "internal gateway error", _family(request))


def create_app(backend: Backend, settings: Settings) -> web.Application:
    """The gateway: `/health` here, everything under `/ollama` through `backend`."""
    app = web.Application(middlewares=[json_errors], client_max_size=settings.gateway_max_body_mb * 1024 * 1024)
    app[BACKEND_KEY] = backend
    forwarder = Forwarder(backend, first_byte_timeout=settings.ollama_timeout)

    async def health(request: web.Request) -> web.Response:
        # Answered here, never by the backend: a health check must not wake a GPU.
        return web.json_response({"status": "ok", "service": APP_NAME, "version": __version__})

    async def forward(request: web.Request) -> web.StreamResponse:
        if request.method not in FORWARDED_METHODS:
            raise web.HTTPMethodNotAllowed(request.method, FORWARDED_METHODS)
        return await forwarder(request)

    async def close_backend(app: web.Application) -> None:
        await app[BACKEND_KEY].aclose()

    app.router.add_get("/health", health)
    app.router.add_route("*", PREFIX + "{tail:(/.*)?}", forward)
    app.on_cleanup.append(close_backend)
    return app
