"""Metadata answered by the gateway itself, so that chat UIs polling it never wake a GPU.

`CatalogBackend` is a `Backend` in front of the real one: it answers `GET`/`HEAD /`,
`/api/version`, `/api/tags`, `POST /api/show` and `GET /v1/models[/<model>]` from the
catalog the backend wrote (`backend.catalog`), and forwards everything else (`/api/ps`
is answered by `proxy.pools`, which knows which GPU containers are up). Its answers go through the same
forwarder as any response: keys, read-only mode, CORS, metrics and the access log treat
them alike, marked `served_by: gateway`.

Whenever it cannot be sure (no catalog, a request it does not fully understand, a
failing lookup) it forwards: a wrong answer would be worse than a GPU start. With no
`CatalogSource` (local mode, where Ollama is already running) it forwards everything.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from backend.http1 import BodySink
from backend.names import parse_name
from backend.routes import route_of, writes_model_store
from backend.wire import Headers, RequestFrame
from proxy.reading import read_request
from proxy.transport import Backend, BackendResponse

log = logging.getLogger(__name__)

# What the gateway answers itself when it has a catalog (for /health and the README).
ANSWERED_HERE = (
    "GET /", "HEAD /", "GET /api/version", "HEAD /api/version", "GET /api/tags", "HEAD /api/tags",
    "POST /api/show", "GET /v1/models", "GET /v1/models/{model}", "GET /api/ps (while no GPU container runs)",
)  # fmt: skip (the last one by proxy.pools)

GIN_JSON = "application/json; charset=utf-8"  # Ollama's native handlers (gin's c.JSON)
OPENAI_JSON = "application/json"  # Ollama's OpenAI writers (json.NewEncoder: a trailing newline)
NO_MODELS_RUNNING = b'{"models":[]}'
MAX_SHOW_BODY = 64 * 1024


class CatalogSource(Protocol):
    async def read(self) -> dict[str, Any] | None:
        """The catalog, or None if there is none (or it cannot be read)."""
        ...


class StoredResponse:
    """An answer the gateway has in hand: status, headers and the whole (small) body."""

    served_by = "gateway"
    cold_start = False
    pool = ""
    reruns = 0

    def __init__(self, status: int, content_type: str, body: bytes) -> None:
        self.status = status
        self.headers: Headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        self.body = body

    async def send_body(self, sink: BodySink) -> None:
        if not sink.write(self.body):
            await sink.drain()

    async def aclose(self) -> None:
        return None


def _go_json(obj: Any) -> bytes:
    """As Go's encoding/json writes it: compact, with <, > and & escaped."""
    text = json.dumps(obj, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def _stored(entry: dict) -> StoredResponse:
    return StoredResponse(entry["status"], entry["content_type"], entry["body"])


def _show_request(body: bytes, user_agent: str) -> str | None:
    """The model a plain `/api/show` asks about, as Ollama reads it (`proxy.reading`); None
    if anything else could change its answer (`verbose`, `system`, `options`, ...), or if
    Ollama would refuse the body (its 400 to give)."""
    if len(body) > MAX_SHOW_BODY or user_agent.startswith("GitHubCopilotChat/"):  # Ollama echoes the name for Copilot
        return None
    reading = read_request("POST", "/api/show", body)
    if reading.error is not None or reading.other_keys or reading.verbose:
        return None
    return reading.model


def might_answer(method: str, route: str) -> bool:
    """Could the gateway answer this itself? Decided before anything is read, so a chat
    never waits on the catalog."""
    if method in ("GET", "HEAD") and route in _STORED_ROUTES:
        return True
    if method == "POST":
        return route == "/api/show"
    return method == "GET" and (route == "/v1/models" or route.startswith("/v1/models/"))


_STORED_ROUTES = {"/": "root", "/api/version": "version", "/api/tags": "tags"}


def catalog_answer(catalog: dict[str, Any], method: str, path: str, body: bytes, user_agent: str = "") -> StoredResponse | None:
    """Ollama's answer to this request according to `catalog`, or None to forward it. Pure.

    Only a path already in the form Ollama's router matches is answered: one with percent
    escapes, dot segments or a trailing slash is Ollama's to answer (its router redirects
    or refuses some of them)."""
    route = route_of(path)
    if path.partition("?")[0] != route or not might_answer(method, route):
        return None
    if route in _STORED_ROUTES:
        return _stored(catalog[_STORED_ROUTES[route]])
    if route == "/v1/models":
        return _stored(catalog["v1_models"])
    if route == "/api/show":
        asked = _show_request(body, user_agent)
    elif "/" not in route[len("/v1/models/") :]:  # gin's :model is one segment
        asked = route[len("/v1/models/") :]
    else:
        return None
    name = parse_name(asked) if asked else None
    if name is None or name.is_cloud:
        return None  # Ollama's to judge (invalid names, cloud models)
    model = catalog["models"].get(name.key)
    if route == "/api/show":
        if model is None:
            return StoredResponse(404, GIN_JSON, _go_json({"error": f"model '{asked}' not found"}))
        return _stored(model["show"])
    if model is None:
        error = {"message": f"model '{asked}' not found", "type": "not_found_error", "param": None, "code": None}
        return StoredResponse(404, OPENAI_JSON, _go_json({"error": error}) + b"\n")
    if model["created"] is None:
        return None
    # Ollama answers with the name as asked, and the namespace it names.
    return StoredResponse(200, OPENAI_JSON, _go_json({"id": asked, "object": "model", "created": model["created"], "owned_by": name.namespace}) + b"\n")


class CatalogBackend:
    """A `Backend` that answers metadata from a `CatalogSource` and forwards the rest."""

    CATALOG_TTL = 2.0  # seconds a catalog read is reused (bursts of /api/show)
    READ_TIMEOUT = 2.0  # seconds a Dict read may take before the request is forwarded instead

    def __init__(self, backend: Backend, source: CatalogSource | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.backend = backend
        self.source = source
        self.clock = clock
        self._catalog: tuple[float, dict[str, Any]] | None = None
        self._reading: asyncio.Future[dict[str, Any] | None] | None = None
        self._generation = 0  # bumped by every store change, so a read that raced one is not kept

    @property
    def answered_here(self) -> tuple[str, ...]:
        if self.source is not None:
            return ANSWERED_HERE
        return getattr(self.backend, "answered_here", ())  # per-pool catalogs, inside proxy.pools

    def known_models(self) -> frozenset[str]:
        """The model keys of the catalog in hand (no read: token labels ask per request)."""
        inner = getattr(self.backend, "known_models", None)
        models = inner() if inner is not None else frozenset()
        if self._catalog is not None and isinstance(self._catalog[1].get("models"), dict):
            models = models | frozenset(self._catalog[1]["models"])
        return models

    async def open(self, request: RequestFrame) -> BackendResponse:
        if self.source is None:  # local mode: everything is forwarded
            return await self.backend.open(request)
        answer = await self._answer(request)
        if answer is not None:
            return answer
        response = await self.backend.open(request)
        if writes_model_store(request["method"], request["path"]):
            self.forget_catalog()  # the backend rewrites the catalog before this completes
            return _ForgetsWhenDone(response, self)
        return response

    async def aclose(self) -> None:
        await self.backend.aclose()

    async def _answer(self, request: RequestFrame) -> StoredResponse | None:
        method, route = request["method"], route_of(request["path"])
        if not might_answer(method, route):
            return None
        catalog = await self._read_catalog()
        if catalog is None:
            return None
        user_agent = next((value for name, value in request["headers"] if name.lower() == "user-agent"), "")
        try:
            return catalog_answer(catalog, method, request["path"], request["body"], user_agent)
        except Exception as exc:  # noqa: BLE001 (a malformed catalog: forward, and say so)
            log.warning("catalog unusable (%s: %s): forwarding", type(exc).__name__, exc)
            return None

    async def _read_catalog(self) -> dict[str, Any] | None:
        if self._catalog is not None and self.clock() - self._catalog[0] < self.CATALOG_TTL:
            return self._catalog[1]
        if self._reading is None:  # one read at a time; a burst shares it
            self._reading = asyncio.ensure_future(self._fetch_catalog())
            self._reading.add_done_callback(lambda _: setattr(self, "_reading", None))
        return await asyncio.shield(self._reading)

    async def _fetch_catalog(self) -> dict[str, Any] | None:
        started, generation = self.clock(), self._generation
        try:
            async with asyncio.timeout(self.READ_TIMEOUT):
                catalog = await self.source.read()
        except Exception as exc:  # noqa: BLE001 (unreadable or slow means forward)
            log.warning("could not read the catalog (%s: %s): forwarding", type(exc).__name__, exc)
            return None
        # Kept only if no store change began or ended meanwhile (its listing must show it),
        # and only a catalog: without one the request is forwarded, and the backend it
        # wakes writes one that the very next request must find.
        if catalog is not None and generation == self._generation:
            self._catalog = (started, catalog)
        return catalog

    def forget_catalog(self) -> None:
        self._catalog = None
        self._generation += 1


class _ForgetsWhenDone:
    """A store change's response: once it is complete, the next read fetches the catalog
    the backend has just rewritten (it holds the last frame back until then)."""

    def __init__(self, response: BackendResponse, owner: CatalogBackend) -> None:
        self._response = response
        self._owner = owner
        self.status = response.status
        self.headers = response.headers
        self.served_by = response.served_by
        self.cold_start = response.cold_start
        self.pool = response.pool

    @property
    def reruns(self) -> int:  # known only once the body is sent
        return self._response.reruns

    async def send_body(self, sink: BodySink) -> None:
        try:
            await self._response.send_body(sink)
        finally:
            self._owner.forget_catalog()

    async def aclose(self) -> None:
        await self._response.aclose()


def containers_up(method: Any) -> Callable[[], Awaitable[bool]]:
    """Is a GPU container of this class up? From `get_current_stats()` of its method
    (`OllamaBackend().proxy`): one control-plane call that neither creates an input nor
    starts a container."""

    async def up() -> bool:
        stats = await method.get_current_stats.aio()
        return stats.num_total_runners > 0

    return up
