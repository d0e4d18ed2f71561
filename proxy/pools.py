"""The right GPU for each model: a `Backend` that sends each request to its model's pool.

On Modal each pool (OLLAMA_MODEL_LIST's `model@GPU`) is its own GPU class with its own
containers; here each is a `Backend` (the Modal RPC transport to that class). A request
goes to the pool of the model it names, by Ollama's name rules (`llama3.2` is
`registry.ollama.ai/library/llama3.2:latest`); a model in no pool goes to the default
pool, where Ollama answers as it would (pulls it, or 404). A request for a model of pool A
never starts a container of pool B.

`GET /api/ps` names no model: it is asked of every pool with a container up (Modal's
`get_current_stats()`, which starts nothing) and the answers merged; with none up it is
`{"models":[]}`. With one pool and no way to tell (local mode) it is simply forwarded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from backend.names import parse_name
from backend.routes import route_of
from backend.wire import RequestFrame
from proxy.catalog import GIN_JSON, NO_MODELS_RUNNING, StoredResponse
from proxy.reading import read_request
from proxy.transport import Backend, BackendResponse, read_body

log = logging.getLogger(__name__)

PS_LIMIT = 8 * 1024 * 1024  # a pool's /api/ps answer (a few hundred bytes per loaded model)

@dataclass(frozen=True)
class PsAnswer:
    """A pool's /api/ps answer: when it was asked, its body as Ollama sent it, its models."""

    asked_at: float
    body: bytes
    models: list[dict]


@dataclass
class PoolRoute:
    name: str
    backend: Backend
    models: tuple[str, ...] = ()
    # Is a GPU container of this pool up? (Modal: get_current_stats; None: cannot tell.)
    running: Callable[[], Awaitable[bool]] | None = None


def model_named(request: RequestFrame) -> str | None:
    """The model a request is about, as Ollama will read it: the forwarder's reading
    (`proxy.reading`), or the same reading made here for a frame that comes without it."""
    if "model" in request:
        return request["model"]
    return read_request(request["method"], route_of(request["path"]), request.get("body") or b"").model


class PoolRouter:
    """Sends each request to the pool of its model; merges `/api/ps` across pools."""

    RUNNING_TTL = 1.5  # seconds an answer about a pool's containers is reused
    PS_FRESH = 30.0  # seconds a pool's /api/ps answer is reused even after new work on the pool
    RUNNING_TIMEOUT = 2.0  # seconds a Modal lookup may take; then the pool is not asked
    PS_TIMEOUT = 10.0  # seconds a running pool may take to answer /api/ps

    def __init__(self, pools: list[PoolRoute], default: str = "default", clock: Callable[[], float] = time.monotonic) -> None:
        self.pools = {pool.name: pool for pool in pools}
        self.default = default if default in self.pools else pools[0].name
        self.clock = clock
        self._pool_of: dict[str, str] = {}
        for pool in pools:
            for model in pool.models:
                parsed = parse_name(model)
                if parsed is not None:
                    self._pool_of[parsed.key] = pool.name
        self._running: dict[str, tuple[float, bool]] = {}
        # Each request to a GPU restarts its scale-down window: /api/ps polling alone must
        # not keep a GPU up. A pool is asked again only after it did other work.
        self._work_at: dict[str, float] = {}  # when each pool last got a request other than /api/ps
        self._ps_answers: dict[str, PsAnswer] = {}  # each pool's last /api/ps answer

    @property
    def answered_here(self) -> tuple[str, ...]:
        """What the default pool's catalog answers, and /api/ps while no pool runs."""
        return getattr(self.pools[self.default].backend, "answered_here", ())

    def known_models(self) -> frozenset[str]:
        """The models in the pools' catalogs (for token labels)."""
        return frozenset().union(*(getattr(pool.backend, "known_models", frozenset)() for pool in self.pools.values()))

    def pool_for(self, request: RequestFrame) -> str:
        if len(self.pools) == 1:
            return self.default  # nothing to decide: no body is read
        named = model_named(request)
        parsed = parse_name(named) if named else None
        return self._pool_of.get(parsed.key, self.default) if parsed else self.default

    async def open(self, request: RequestFrame) -> BackendResponse:
        if request["method"] == "GET" and route_of(request["path"]) == "/api/ps" and self._can_tell():
            return await self._ps(request)
        name = self.pool_for(request)
        self._work_at[name] = self.clock()
        response = await self.pools[name].backend.open(request)
        response.pool = name
        if response.cold_start:
            self._running[name] = (self.clock(), True)  # up now: /api/ps asks it
        return response

    async def aclose(self) -> None:
        for pool in self.pools.values():
            await pool.backend.aclose()

    def _can_tell(self) -> bool:
        return all(pool.running is not None for pool in self.pools.values())

    async def _is_running(self, pool: PoolRoute) -> bool:
        cached = self._running.get(pool.name)
        if cached is not None and self.clock() - cached[0] < self.RUNNING_TTL:
            return cached[1]
        try:
            async with asyncio.timeout(self.RUNNING_TIMEOUT):
                running = await pool.running()
        except Exception as exc:  # noqa: BLE001 (unknown: /api/ps must not start a GPU to find out)
            log.warning("could not tell whether pool %s runs (%s: %s): not asking it", pool.name, type(exc).__name__, exc)
            running = False
        self._running[pool.name] = (self.clock(), running)
        if not running:
            self._ps_answers.pop(pool.name, None)  # scaled down: nothing is loaded any more
        return running

    async def _ps(self, request: RequestFrame) -> BackendResponse:
        pools = list(self.pools.values())
        up = [pool for pool, running in zip(pools, await asyncio.gather(*(self._is_running(p) for p in pools))) if running]
        if not up:
            return StoredResponse(200, GIN_JSON, NO_MODELS_RUNNING)
        answers = await asyncio.gather(*(self._ps_of(pool, request) for pool in up))
        if len(up) == 1:  # Ollama's own answer, byte for byte
            return StoredResponse(200, GIN_JSON, answers[0].body if answers[0] is not None else NO_MODELS_RUNNING)
        models = [model for answer in answers if answer is not None for model in answer.models]
        models.sort(key=lambda model: model.get("expires_at", ""), reverse=True)  # as Ollama sorts them
        return StoredResponse(200, GIN_JSON, json.dumps({"models": models}, separators=(",", ":")).encode())

    async def _ps_of(self, pool: PoolRoute, request: RequestFrame) -> PsAnswer | None:
        try:
            async with asyncio.timeout(self.PS_TIMEOUT):
                return await self._ps_body(pool, request)
        except Exception as exc:  # noqa: BLE001 (one pool failing leaves the others' answer)
            log.warning("pool %s did not answer /api/ps (%s: %s)", pool.name, type(exc).__name__, exc)
            return None

    async def _ps_body(self, pool: PoolRoute, request: RequestFrame) -> PsAnswer | None:
        """The pool's /api/ps answer: its last one unless the pool did other work since (and
        that answer is older than PS_FRESH), so polling alone reaches a GPU once at most."""
        kept = self._ps_answers.get(pool.name)
        if kept is not None and (self.clock() - kept.asked_at < self.PS_FRESH or kept.asked_at >= self._work_at.get(pool.name, 0.0)):
            return kept
        asked_at = self.clock()
        response = await pool.backend.open(request)
        try:
            body = await read_body(response, PS_LIMIT)
        finally:
            await response.aclose()
        models = json.loads(body).get("models") if response.status == 200 else None
        if not isinstance(models, list):
            return None  # not a listing: not kept (and not merged)
        answer = self._ps_answers[pool.name] = PsAnswer(asked_at, body, models)
        return answer
