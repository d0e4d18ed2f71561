"""The gateway's aiohttp application: health, API keys, CORS, and the forwarder."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiohttp_cors
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from backend.routes import writes_model_store
from config import APP_NAME, Settings
from proxy.auth import is_loopback_host, key_is_valid, origin_may_call, presented_key
from proxy.errors import error_response
from proxy.forward import EXCHANGE, Forwarder, forwarded_path
from proxy.observe import Exchange, Metrics, path_family
from proxy.paths import PREFIX, api_family
from proxy.server import quiet_malformed_requests
from proxy.transport import Backend

log = logging.getLogger(__name__)

__version__ = "0.1.0"

FORWARDED_METHODS = ("GET", "HEAD", "POST", "DELETE")
METRICS_PATH = "/metrics"
BACKEND_KEY = web.AppKey("backend", Backend)
METRICS_KEY = web.AppKey("metrics", Metrics)

# The gateway's own refusals, as error kinds in metrics and logs.
_REFUSALS = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def _family(request: web.Request) -> str:
    path = forwarded_path(request)
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
    except ConnectionResetError:
        raise  # the client left mid-response: there is nobody to answer
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.rel_url.raw_path)
        return error_response(500, "internal gateway error", _family(request))


def observe(metrics: Metrics) -> Middleware:
    """One Exchange per forwarded request: counted and logged once, when it ends."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = forwarded_path(request)
        if path is None or request.method == "OPTIONS":
            return await handler(request)
        route = path.partition("?")[0]  # logged without the query string
        exchange = request[EXCHANGE] = Exchange(request.method, route, path_family(path))
        metrics.in_flight.inc()
        try:
            response = await handler(request)
            if exchange.first_byte is None:  # the gateway answered by itself
                exchange.status = response.status
                if response.status >= 400 and exchange.error is None:
                    exchange.error = _REFUSALS.get(response.status, f"http_{response.status}")
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            exchange.client_left = True
            exchange.status = exchange.status or 499  # nginx's "client closed request"
            raise
        finally:
            metrics.in_flight.dec()
            metrics.record(exchange)

    return middleware


def access_guard(settings: Settings, loopback_only: bool) -> Middleware:
    """Host, browser origin, API keys and read-only mode for forwarded paths (and
    /metrics). Preflights pass: browsers send no credentials on them, and CORS answers
    them without the backend."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = forwarded_path(request)
        protected = path is not None or request.rel_url.raw_path == METRICS_PATH
        if not protected or request.method == "OPTIONS":
            return await handler(request)
        family = _family(request)
        if loopback_only and not is_loopback_host(request.host):
            # A page on a rebound DNS name must not reach a gateway bound to loopback.
            return error_response(403, f"host {request.host!r} is not allowed: use localhost or 127.0.0.1", family)
        if not origin_may_call(request.headers.get("Origin"), settings.gateway_cors_origins, bool(settings.gateway_api_keys)):
            return error_response(403, "origin not allowed: set GATEWAY_CORS_ORIGINS, or API keys", family)
        if settings.gateway_api_keys and not key_is_valid(presented_key(request.headers), settings.gateway_api_keys):
            return error_response(
                401, "missing or invalid API key: send Authorization: Bearer <key>", family, {"WWW-Authenticate": "Bearer"}
            )
        if settings.gateway_read_only and path and writes_model_store(request.method, path):
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


def health_report(settings: Settings, backend_kind: str) -> dict:
    """The gateway's version and its non-secret configuration."""
    return {
        "status": "ok",
        "service": APP_NAME,
        "version": __version__,
        "backend": backend_kind,
        "config": {
            "gpu": settings.ollama_gpu,
            "models": list(settings.ollama_model_list),
            "ollama_version": settings.ollama_version,
            "auth": bool(settings.gateway_api_keys),
            "proxy_auth": settings.gateway_proxy_auth,
            "read_only": settings.gateway_read_only,
            "cors_origins": list(settings.gateway_cors_origins),
            "timeout_s": settings.ollama_timeout,
            "max_body_mb": settings.gateway_max_body_mb,
        },
    }


def create_app(
    backend: Backend,
    settings: Settings,
    backend_kind: str = "local",
    first_byte_timeout: float | None = None,
    loopback_only: bool = False,
) -> web.Application:
    """The gateway: `/health` here, everything under `/ollama` through `backend`.

    `first_byte_timeout` defaults to OLLAMA_TIMEOUT; `loopback_only` refuses any Host
    but a loopback one (local mode bound to loopback, as Ollama itself does).
    """
    metrics = Metrics()
    app = web.Application(
        middlewares=[observe(metrics), json_errors, access_guard(settings, loopback_only)],
        client_max_size=settings.gateway_max_body_mb * 1024 * 1024,
    )
    app[BACKEND_KEY] = backend
    app[METRICS_KEY] = metrics
    forward = Forwarder(backend, first_byte_timeout=first_byte_timeout or settings.ollama_timeout).handle
    health_body = health_report(settings, backend_kind)

    async def health(request: web.Request) -> web.Response:
        # Answered here, never by the backend: a health check must not wake a GPU.
        return web.json_response(health_body)

    async def metrics_page(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def close_backend(app: web.Application) -> None:
        await app[BACKEND_KEY].aclose()

    routes = [app.router.add_get("/health", health), app.router.add_get(METRICS_PATH, metrics_page)]
    # Other methods get the router's 405 (with Allow), made JSON by json_errors.
    forwarded = app.router.add_resource(PREFIX + "{tail:(/.*)?}")
    routes += [forwarded.add_route(method, forward) for method in FORWARDED_METHODS]
    setup_cors(app, settings.gateway_cors_origins, routes)
    app.on_cleanup.append(close_backend)
    quiet_malformed_requests()

    if not settings.gateway_api_keys:
        log.warning("no GATEWAY_API_KEYS set: the gateway is open to anyone who can reach it")
    return app
