"""The gateway's aiohttp application: health, API keys, CORS, and the forwarder."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import aiohttp_cors
from aiohttp import web

from backend.routes import writes_model_store
from config import APP_NAME, Settings
from proxy.auth import key_is_valid, presented_key
from proxy.errors import error_response
from proxy.forward import Forwarder
from proxy.paths import PREFIX, api_family, upstream_path
from proxy.server import quiet_malformed_requests
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
        message = exc.reason if exc.text is None else exc.text.removeprefix(f"{exc.status}: ")
        return error_response(exc.status, message, _family(request), headers)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.rel_url.raw_path)
        return error_response(500, "internal gateway error", _family(request))


def access_guard(settings: Settings) -> Callable:
    """API keys and read-only mode for forwarded paths. Preflights pass: browsers send
    no credentials on them, and CORS answers them without the backend."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = upstream_path(request.rel_url.raw_path, request.rel_url.raw_query_string)
        if path is None or request.method == "OPTIONS":
            return await handler(request)
        family = api_family(path)
        if settings.gateway_api_keys and not key_is_valid(presented_key(request.headers), settings.gateway_api_keys):
            return error_response(
                401, "missing or invalid API key: send Authorization: Bearer <key>", family, {"WWW-Authenticate": "Bearer"}
            )
        if settings.gateway_read_only and writes_model_store(request.method, path):
            return error_response(403, "this garden is read-only: pull, push, create, copy and delete are disabled", family)
        return await handler(request)

    return guard


def setup_cors(app: web.Application, origins: tuple[str, ...], routes: list) -> None:
    """Browsers may call from `origins`; preflights are answered here, never forwarded."""
    options = aiohttp_cors.ResourceOptions(
        allow_credentials=False,  # keys travel in headers, not cookies
        allow_headers="*",  # Authorization, Content-Type, the OpenAI SDK's x-stainless-* ...
        expose_headers="*",
        allow_methods=list(FORWARDED_METHODS),
        max_age=86400,
    )
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in origins})
    for route in routes:
        cors.add(route)


def create_app(backend: Backend, settings: Settings) -> web.Application:
    """The gateway: `/health` here, everything under `/ollama` through `backend`."""
    app = web.Application(
        middlewares=[json_errors, access_guard(settings)], client_max_size=settings.gateway_max_body_mb * 1024 * 1024
    )
    app[BACKEND_KEY] = backend
    forward = Forwarder(backend, first_byte_timeout=settings.ollama_timeout).handle

    async def health(request: web.Request) -> web.Response:
        # Answered here, never by the backend: a health check must not wake a GPU.
        return web.json_response({"status": "ok", "service": APP_NAME, "version": __version__})

    async def close_backend(app: web.Application) -> None:
        await app[BACKEND_KEY].aclose()

    routes = [app.router.add_get("/health", health)]
    # Other methods get the router's 405 (with Allow), made JSON by json_errors.
    forwarded = app.router.add_resource(PREFIX + "{tail:(/.*)?}")
    routes += [forwarded.add_route(method, forward) for method in FORWARDED_METHODS]
    setup_cors(app, settings.gateway_cors_origins, routes)
    app.on_cleanup.append(close_backend)
    quiet_malformed_requests()

    if not settings.gateway_api_keys:
        log.warning("no GATEWAY_API_KEYS set: the gateway is open to anyone who can reach it")
    return app
