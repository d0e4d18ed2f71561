"""The gateway's aiohttp application: health, API keys, CORS, and the forwarder."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiohttp_cors
from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from backend.routes import allowed_when_read_only, route_of
from config import APP_NAME, ConfigError, Settings, api_keys
from proxy.auth import is_loopback_host, key_name, origin_may_call, presented_key
from proxy.catalog import CatalogBackend, CatalogSource
from proxy.encodings import decodable
from proxy.dashboard import SEES_EVERYTHING, VIEWER
from proxy.dashboard import add_routes as add_garden_routes
from proxy.errors import error_response
from proxy.forward import EXCHANGE, MODEL_RULES, Forwarder, forwarded_path, forwarded_route
from proxy.garden import CURRENT_KEY, Garden
from proxy.ledger import FileUsageStore, MemoryUsageStore
from proxy.observe import Exchange, Metrics, route_family
from proxy.paths import PREFIX, not_found_hint, route_api_family
from proxy.policy import Limits, ModelLabels, ModelRules, limited_key_may_use, policy_for
from proxy.usage import NO_KEY
from proxy.transport import Backend

log = logging.getLogger(__name__)

__version__ = "0.1.0"

FORWARDED_METHODS = ("GET", "HEAD", "POST", "DELETE")
METRICS_PATH = "/metrics"
BACKEND_KEY = web.AppKey("backend", Backend)
METRICS_KEY = web.AppKey("metrics", Metrics)
GARDEN_KEY = web.AppKey("garden", Garden)

# The gateway's own refusals, as error kinds in metrics and logs.
_REFUSALS = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    408: "body_timeout", 413: "body_too_large", 415: "unsupported_encoding", 417: "expectation_failed",
    429: "rate_limited",
}  # fmt: skip

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def _family(request: web.Request) -> str:
    """The API family whose error shape the caller expects, also for a path outside
    /ollama (a `/v1/...` there is an OpenAI client pointed at the bare URL)."""
    return route_api_family(forwarded_route(request) or route_of(request.rel_url.raw_path))


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error the gateway makes itself is JSON, never an HTML page or a traceback.

    An error answered before the request's body was read closes the connection after it:
    aiohttp would otherwise keep reading (and dropping) that body for up to 10 s.
    """
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")}
        message = exc.reason if exc.text is None else exc.text.removeprefix(f"{exc.status}: ")
        response = error_response(exc.status, message, _family(request), headers)
    except ConnectionResetError:
        raise  # the client left mid-response: there is nobody to answer
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.rel_url.raw_path)
        response = error_response(500, "internal gateway error", _family(request))
    if response.status >= 400 and request.body_exists and not request.content.is_eof():
        response.force_close()
    return response


def observe(metrics: Metrics, garden: Garden) -> Middleware:
    """One Exchange per forwarded request: counted and logged once, when it ends."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = forwarded_path(request)
        if path is None or request.method == "OPTIONS":
            return await handler(request)
        logged = path.partition("?")[0]  # logged without the query string
        exchange = request[EXCHANGE] = Exchange(request.method, logged, route_family(forwarded_route(request)))
        metrics.in_flight.inc()
        try:
            response = await handler(request)
            if exchange.first_byte is None:  # the gateway answered by itself
                exchange.status = response.status
                exchange.bytes_out = response.content_length or 0  # its own error body
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
            garden.request_ended(exchange, request.headers.get("User-Agent", ""))

    return middleware


def access_guard(
    settings: Settings,
    loopback_only: bool,
    public: frozenset[web.AbstractResource],
    garden: Garden,
    own_usage: frozenset[web.AbstractResource] = frozenset(),
    public_get: frozenset[web.AbstractResource] = frozenset(),
) -> Middleware:
    """Host, browser origin, API key, request body headers and read-only mode, checked
    in that order before any body is read, for every route but the `public` ones (and
    GET on the `public_get` ones: the garden page; a keyless HEAD / still gets its 401).

    Decided on the route the router matched (the decoded path), never on the raw path:
    `/%6detrics` is /metrics to the router, so it is /metrics here too. Preflights pass:
    browsers send no credentials on them, and CORS answers them without the backend.
    A key with an allowlist reaches no gateway route but the `own_usage` ones, which
    then show it only its own usage. A key over its GPU budget gets 429 (proxy.budgets).
    """
    max_body = settings.gateway_max_body_mb * 1024 * 1024
    keys = api_keys(settings.gateway_api_keys)
    policies = dict(settings.gateway_key_policy)
    rules = {name: ModelRules(policy.models) for name, policy in policies.items()}
    limits = Limits()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        if request.method == "OPTIONS" or resource in public or (request.method == "GET" and resource in public_get):
            return await handler(request)
        family = _family(request)
        if loopback_only and not is_loopback_host(request.host):
            # A page on a rebound DNS name must not reach a gateway bound to loopback.
            return error_response(403, f"host {request.host!r} is not allowed: use localhost or 127.0.0.1", family)
        if not origin_may_call(request.headers.get("Origin"), settings.gateway_cors_origins, bool(settings.gateway_api_keys)):
            return error_response(403, "origin not allowed: set GATEWAY_CORS_ORIGINS, or API keys", family)
        name = key_name(presented_key(request.headers), keys) if keys else ""
        if name is None:
            return error_response(
                401, "missing or invalid API key: send Authorization: Bearer <key> or X-API-Key: <key>", family, {"WWW-Authenticate": "Bearer"}
            )
        if EXCHANGE in request:
            request[EXCHANGE].key = name
        who = name or NO_KEY  # the name usage is charged to
        CURRENT_KEY.set(who)  # for the pool meter (proxy.garden), in this request's task
        encoding = request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
        if encoding != "identity" and not decodable(request.method, forwarded_route(request), encoding):
            # Ollama takes a compressed body on /v1/responses only; the forwarder inflates
            # that one as it arrives, within GATEWAY_MAX_BODY_MB (proxy.encodings).
            return error_response(415, f"compressed request bodies are not accepted here (Content-Encoding: {encoding[:40]})", family)
        if (request.content_length or 0) > max_body:
            return error_response(413, f"request body over {settings.gateway_max_body_mb} MB (GATEWAY_MAX_BODY_MB)", family)
        path = forwarded_path(request)
        if settings.gateway_read_only and path and not allowed_when_read_only(request.method, path):
            return error_response(403, "this garden is read-only: only chat, generation, embeddings and model listings are served", family)
        policy = policy_for(name, policies)  # NO_POLICY without policies
        key_rules = None if policy.models is None else rules.get(name) or rules["*"]  # a key limited to some models
        request[VIEWER], request[SEES_EVERYTHING] = who, key_rules is None
        if key_rules is not None and path is None:
            if resource not in own_usage:
                # /metrics names every key, model and count: not for a key limited to some models.
                return error_response(403, f"the key {name!r} may use only some models: /metrics is for the garden's owner", family)
            request[MODEL_RULES] = key_rules  # the page shows only its models' pools
        limited = False
        if policies and path is not None:
            if key_rules is not None:
                route = forwarded_route(request) or "/"
                if not limited_key_may_use(request.method, route):
                    return error_response(403, f"the key {name!r} may use only some models: {request.method} {route[:100]} is not for it", family)
                request[MODEL_RULES] = key_rules
            limited = policy.max_streams is not None or policy.requests_per_minute is not None
            # Checked as a request arrives, never during one: a stream is not cut.
            over = garden.refusal(who, policy)
            if over is not None:
                return error_response(429, over.message, family, {"Retry-After": str(over.retry_after)})
            if limited:
                refusal = limits.admit(name, policy)
                if refusal is not None:
                    return error_response(429, refusal.message, family, {"Retry-After": str(refusal.retry_after)})
        if path is not None:
            garden.request_started(who)
        try:
            if hdrs.EXPECT in request.headers and request.version == HttpVersion11 and request.headers[hdrs.EXPECT].lower() == "100-continue":
                # Only now, with every check passed, may the client send its body.
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                request.writer.output_size = 0
            return await handler(request)
        finally:
            if path is not None:
                garden.request_done(who)
            if limited:
                limits.done(name)

    return guard


def method_not_allowed(allowed: list[str]) -> Handler:
    async def refuse(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMethodNotAllowed(request.method, allowed)

    return refuse


async def not_found(request: web.Request) -> web.StreamResponse:
    """Anything outside /ollama and the gateway's own routes: a hint in the caller's shape."""
    return error_response(404, not_found_hint(route_of(request.rel_url.raw_path)), _family(request))


async def continue_after_checks(request: web.Request) -> web.StreamResponse | None:
    """aiohttp answers `Expect: 100-continue` before any middleware runs, so a keyless
    client would be invited to send its body; the guard sends the 100 itself instead."""
    expect = request.headers.get(hdrs.EXPECT, "")
    if expect.lower() != "100-continue":
        return error_response(417, f"unsupported Expect: {expect[:40]}", _family(request))
    return None


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
    app.on_response_prepare.append(vary_on_origin)  # after aiohttp-cors's own: it sees its headers


async def vary_on_origin(request: web.Request, response: web.StreamResponse) -> None:
    """aiohttp-cors echoes the request's Origin (or leaves CORS headers out for one it
    refuses): the answer depends on Origin, so a shared cache must key on it."""
    if hdrs.ORIGIN in request.headers and "origin" not in response.headers.get(hdrs.VARY, "").lower():
        response.headers.add(hdrs.VARY, hdrs.ORIGIN)


def health_report(settings: Settings, backend_kind: str, local: dict | None = None, answered_here: tuple[str, ...] = ()) -> dict:
    """The gateway's version and its non-secret configuration. In local mode (`local`:
    the Ollama it talks to) the Modal GPU and model list mean nothing, so they are left out."""
    backend = local if local is not None else {
        "gpu": settings.ollama_gpu,
        "models": list(settings.ollama_model_list),
        "pools": [{"name": pool.name, "gpu": pool.gpu, "models": list(pool.models)} for pool in settings.ollama_pools],
        "ollama_version": settings.ollama_version,
    }
    return {
        "status": "ok",
        "service": APP_NAME,
        "version": __version__,
        "backend": backend_kind,
        "answered_by_gateway": list(answered_here),  # without waking the backend
        "config": {
            **backend,
            "auth": bool(settings.gateway_api_keys),
            "proxy_auth": settings.gateway_proxy_auth,
            "read_only": settings.gateway_read_only,
            "cors_origins": list(settings.gateway_cors_origins),
            "timeout_s": settings.ollama_timeout,
            "max_body_mb": settings.gateway_max_body_mb,
            "body_timeout_s": settings.gateway_body_timeout_s,
            "early_head_s": settings.gateway_early_head_s,
        },
    }


def create_app(
    backend: Backend,
    settings: Settings,
    backend_kind: str = "local",
    first_byte_timeout: float | None = None,
    loopback_only: bool = False,
    local: dict | None = None,
    catalog: CatalogSource | None = None,
    garden: Garden | None = None,
) -> web.Application:
    """The gateway: `/health` here, everything under `/ollama` through `backend`.

    `first_byte_timeout` defaults to OLLAMA_TIMEOUT; `loopback_only` refuses any Host
    but a loopback one (local mode bound to loopback, as Ollama itself does); `local`
    describes the local Ollama for /health; with a `catalog` (on Modal) the gateway
    answers metadata itself (proxy.catalog), without one it forwards everything.
    `garden` meters GPU time (on Modal, with the pools' backends wrapped by
    `garden.metered`); without one (local mode) GPU time is absent from the page.
    """
    if garden is None:
        store = FileUsageStore(settings.gateway_usage_file) if settings.gateway_usage_file else MemoryUsageStore()
        garden = Garden({}, store=store, prices=dict(settings.gateway_gpu_prices))
    app = web.Application(client_max_size=settings.gateway_max_body_mb * 1024 * 1024)
    backend = CatalogBackend(backend, catalog)
    metrics = Metrics(ModelLabels(settings.ollama_model_list, backend.known_models))
    metrics.registry.register(garden)  # its collect(): GPU time, by key, cold starts
    garden.model_label = metrics.model_labels.label
    garden.pool_models = {pool.name: pool.models for pool in settings.ollama_pools}
    app[BACKEND_KEY] = backend
    app[METRICS_KEY] = metrics
    app[GARDEN_KEY] = garden
    forward = Forwarder(
        backend,
        first_byte_timeout or settings.ollama_timeout,
        settings.gateway_body_timeout_s,
        early_head_s=settings.gateway_early_head_s,
        stream_timeout=settings.ollama_timeout,  # a started stream is past Modal's 150 s limit
        max_body=settings.gateway_max_body_mb * 1024 * 1024,
    ).handle
    health_body = health_report(settings, backend_kind, local, backend.answered_here)

    async def health(request: web.Request) -> web.Response:
        # Answered here, never by the backend: a health check must not wake a GPU.
        return web.json_response(health_body)

    async def metrics_page(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def close_backend(app: web.Application) -> None:
        await app[BACKEND_KEY].aclose()

    async def start_garden(app: web.Application) -> None:
        await app[GARDEN_KEY].start()

    async def stop_garden(app: web.Application) -> None:
        await app[GARDEN_KEY].stop()

    # Every route the router can match is ours, with our Expect handler: aiohttp's own
    # (for unmatched paths and methods) would invite a body before the guard ran.
    health_route = app.router.add_get("/health", health, expect_handler=continue_after_checks)
    routes = [health_route, app.router.add_get(METRICS_PATH, metrics_page, expect_handler=continue_after_checks)]
    forwarded = app.router.add_resource(PREFIX + "{tail:(/.*)?}")
    routes += [forwarded.add_route(method, forward, expect_handler=continue_after_checks) for method in FORWARDED_METHODS]
    page_routes, usage_routes = add_garden_routes(app, garden, continue_after_checks)
    routes += page_routes + usage_routes
    # Everything else is behind the guard; the page holds nothing and asks for a key.
    public = frozenset({health_route.resource})
    page = frozenset(route.resource for route in page_routes)
    own_usage = frozenset(route.resource for route in usage_routes)
    guard = access_guard(settings, loopback_only, public, garden, own_usage, public_get=page)
    app.middlewares.extend([observe(metrics, garden), json_errors, guard])
    setup_cors(app, settings.gateway_cors_origins, routes)
    # After CORS, so its preflight routes match OPTIONS first: other methods get a 405
    # with Allow, other paths a 404, both made JSON by json_errors.
    for resource in {route.resource for route in routes}:
        resource.add_route("*", method_not_allowed(sorted({r.method for r in resource} | {"OPTIONS"})), expect_handler=continue_after_checks)
    app.router.add_route("*", "/{anything:.*}", not_found, expect_handler=continue_after_checks)
    app.on_startup.append(start_garden)
    app.on_cleanup.append(stop_garden)
    app.on_cleanup.append(close_backend)

    if settings.gateway_api_keys_secret and not settings.gateway_api_keys:
        # Fail closed: a misspelt or empty variable in the secret must not open the garden.
        raise ConfigError(
            f"GATEWAY_API_KEYS_SECRET={settings.gateway_api_keys_secret!r} names a Modal Secret that holds no GATEWAY_API_KEYS: "
            "put the keys in it under that name (modal secret create ... GATEWAY_API_KEYS=name:key,...)"
        )
    if not settings.gateway_api_keys:
        log.warning("no GATEWAY_API_KEYS set: the gateway is open to anyone who can reach it")
    else:  # which names were read (never the keys): a typo shows here, not in a 401 later
        log.info("API keys: %s", ", ".join(key.name for key in api_keys(settings.gateway_api_keys)))
    return app
