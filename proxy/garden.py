"""What the garden costs and who spent it: the meter, its samples, the shared ledger,
budgets, cold starts and the report the page (proxy.dashboard) shows.

One `Garden` per gateway process. On Modal it samples each pool's containers with
`get_current_stats()` (a control-plane read that creates no input and starts nothing):
every `fast_interval` seconds while a pool may be up (a request in flight, or containers
seen up), every `idle_interval` seconds otherwise (a warm window or another gateway may
have woken it). Locally there is no GPU time to measure: it is reported as absent.

Requests are metered per pool by `MeteredBackend`, which wraps the transport to a pool's
GPU class (after its catalog: answers the gateway gives itself cost no GPU time). The key
comes from `CURRENT_KEY`, set by the access guard for the request's task.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily

from backend.http1 import BodySink
from backend.routes import route_of
from backend.wire import RequestFrame
from config import KeyPolicy
from proxy.budgets import Spent, budget_refusal, has_budget
from proxy.ledger import MemoryUsageStore, SharedLedger, UsageStore
from proxy.observe import Exchange
from proxy.policy import Refusal, model_label
from proxy.prices import PRICES_AS_OF, PRICES_SOURCE, price_per_hour
from proxy.transport import Backend, BackendResponse
from proxy.usage import NO_KEY, WARM, Meter, Record, add_tokens, day_of, hour_of, month_of

log = logging.getLogger(__name__)

CURRENT_KEY: contextvars.ContextVar[str] = contextvars.ContextVar("garden_key", default=NO_KEY)
Runners = Callable[[], Awaitable[int]]


def runners_of(method: Any) -> Runners:
    """How many containers of a GPU class are up (starting, busy or idle), from
    `get_current_stats()` of its method (`OllamaBackend().proxy`)."""

    async def runners() -> int:
        stats = await method.get_current_stats.aio()
        return stats.num_total_runners

    return runners


class Garden:
    COLD_STARTS_KEPT = 20
    SYNC_TIMEOUT = 10.0  # seconds the usage store may take at start before the gateway listens without it

    def __init__(
        self,
        pools: dict[str, str],
        runners: dict[str, Runners] | None = None,
        store: UsageStore | None = None,
        prices: dict[str, float] | None = None,
        fast_interval: float = 5.0,
        idle_interval: float = 60.0,
        sync_interval: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.gpus = dict(pools)  # pool -> GPU
        self.pool_models: dict[str, tuple[str, ...]] = {}  # pool -> its configured models (set by the app)
        self.runners = runners or {}
        self.measured = bool(self.runners)  # False: no GPU time to measure (local mode)
        self.ledger = SharedLedger(store or MemoryUsageStore(), clock=clock)
        self.meter = Meter(self.gpus, self.ledger.own, elsewhere=self.ledger)
        self.prices = {pool: price_per_hour(gpu, prices) for pool, gpu in self.gpus.items()}
        self.fast_interval, self.idle_interval, self.sync_interval = fast_interval, idle_interval, sync_interval
        self.clock = clock
        self.cold_starts: collections.deque[dict] = collections.deque(maxlen=self.COLD_STARTS_KEPT)
        self.cold_start_counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.in_flight: collections.Counter[str] = collections.Counter()  # key -> requests (every route)
        self.samples = 0
        # A model's name in the record: bounded to the models the garden knows (create_app
        # sets the metrics' labeller), so no client can grow the shared record at will.
        self.model_label: Callable[[str | None], str] = model_label
        self._tasks: list[asyncio.Task] = []
        self._last_sample: dict[str, float] = {}

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        try:
            async with asyncio.timeout(self.SYNC_TIMEOUT):  # the gateway must listen soon
                await self.ledger.sync()  # what earlier gateways spent counts from the first request
        except Exception as exc:  # noqa: BLE001 (a store that cannot be read must not stop the gateway)
            log.error("usage store unreadable at start (%s: %s): budgets count from zero until it is", type(exc).__name__, exc)
        self._tasks = [asyncio.ensure_future(self._sync_loop())]
        if self.measured:
            self._tasks.append(asyncio.ensure_future(self._sample_loop()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self.meter.catch_up(self.clock())
        try:
            async with asyncio.timeout(self.SYNC_TIMEOUT):
                await self.ledger.sync()
        except Exception as exc:  # noqa: BLE001
            log.warning("usage not written at stop: %s: %s", type(exc).__name__, exc)

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sync_interval)
            try:
                async with asyncio.timeout(self.SYNC_TIMEOUT):
                    await self.ledger.sync()
            except Exception as exc:  # noqa: BLE001 (tried again at the next interval)
                log.warning("usage store sync failed: %s: %s", type(exc).__name__, exc)

    async def _sample_loop(self) -> None:
        while True:
            await self.sample_due()
            await asyncio.sleep(self.fast_interval)

    async def sample_due(self) -> None:
        """Sample the pools that are due: hot ones every time, the others every idle_interval."""
        now = self.clock()
        due = [
            name for name, pool in self.meter.pools.items()
            if name in self.runners and (pool.hot or now - self._last_sample.get(name, -1e18) >= self.idle_interval)
        ]  # fmt: skip
        counts = await asyncio.gather(*(self._runners(name) for name in due))
        now = self.clock()
        for name, count in zip(due, counts):
            self._last_sample[name] = now
            if count is not None:
                self.meter.sample(name, count, now)

    async def _runners(self, name: str) -> int | None:
        try:
            async with asyncio.timeout(5.0):
                self.samples += 1
                return await self.runners[name]()
        except Exception as exc:  # noqa: BLE001 (unknown: keep the last count, try again)
            log.warning("could not read pool %s's containers (%s: %s)", name, type(exc).__name__, exc)
            return None

    # --- requests --------------------------------------------------------------------------
    def metered(self, pool: str, backend: Backend) -> Backend:
        return MeteredBackend(self, pool, backend)

    def request_started(self, key: str) -> None:
        self.in_flight[key] += 1

    def request_done(self, key: str) -> None:
        self.in_flight[key] -= 1
        if self.in_flight[key] <= 0:
            del self.in_flight[key]

    def request_ended(self, exchange: Exchange, user_agent: str) -> None:
        """Once per forwarded request, when it ends: tokens, and the cold start it waited for."""
        key = exchange.key or NO_KEY
        now = self.clock()
        if exchange.prompt_tokens is not None:
            add_tokens(self.ledger.own, now, key, self.model_label(exchange.model), exchange.prompt_tokens, exchange.completion_tokens or 0)
        if exchange.cold_start:
            wait = None if exchange.backend_head is None else round(exchange.backend_head - exchange.started, 2)
            start = {
                "at": now, "pool": exchange.pool, "key": key, "model": self.model_label(exchange.model),
                "route": exchange.family, "user_agent": user_agent[:200], "wait_s": wait,
            }  # fmt: skip
            self.cold_starts.append(start)
            self.cold_start_counts[(exchange.pool, key)] += 1
            log.info("cold start of pool %s by key %s: model %s, %s, client %r, waited %ss", exchange.pool, key, start["model"], exchange.family, start["user_agent"], wait)

    # --- budgets ---------------------------------------------------------------------------
    def spent(self, key: str, now: float | None = None, totals: Record | None = None) -> Spent:
        now = self.clock() if now is None else now
        totals = self.ledger.totals() if totals is None else totals
        day, month = totals["gpu"].get(day_of(now), {}), totals["gpu"].get(month_of(now), {})
        seconds_day = {pool: keys.get(key, 0.0) for pool, keys in day.items()}
        seconds_month = {pool: keys.get(key, 0.0) for pool, keys in month.items()}
        return Spent(
            sum(seconds_day.values()),
            sum(seconds_month.values()),
            sum(s * self.prices.get(p, 0.0) / 3600 for p, s in seconds_day.items()),
            sum(s * self.prices.get(p, 0.0) / 3600 for p, s in seconds_month.items()),
        )

    def refusal(self, key: str, policy: KeyPolicy) -> Refusal | None:
        """A 429's reason if `key` has used up a budget (in memory: no store call here)."""
        if not has_budget(policy):
            return None
        now = self.clock()
        return budget_refusal(key, policy, self.spent(key, now), now)

    # --- the page's report -------------------------------------------------------------------
    def report(self, viewer: str, everything: bool, may_use: Callable[[str], bool] | None = None) -> dict:
        """What the page shows. `everything` False (a key with an allowlist): only the
        viewer's own usage, and only the pools that hold a model it `may_use` (another
        pool's state would tell when the owner uses it)."""
        now = self.clock()
        self.meter.catch_up(now)  # up to this moment, not the last look
        totals = self.ledger.totals()
        day, month = totals["gpu"].get(day_of(now), {}), totals["gpu"].get(month_of(now), {})
        visible = (lambda key: True) if everything else (lambda key: key == viewer)

        def cost(pool: str, seconds: float) -> float:
            return seconds * self.prices.get(pool, 0.0) / 3600

        shown = [name for name in self.meter.pools if everything or (may_use is not None and any(map(may_use, self.pool_models.get(name, ()))))]
        pools = []
        for name, pool in ((name, self.meter.pools[name]) for name in shown):
            today = {k: s for k, s in day.get(name, {}).items() if visible(k)}
            this_month = {k: s for k, s in month.get(name, {}).items() if visible(k)}
            pools.append({
                "name": name, "gpu": pool.gpu, "state": pool.state if self.measured else "unknown",
                "containers": pool.runners if self.measured else None,
                "in_flight": sum(pool.in_flight.values()) if everything else pool.in_flight.get(viewer, 0),
                "price_per_hour": self.prices.get(name, 0.0),
                "seconds_today": sum(today.values()), "seconds_month": sum(this_month.values()),
                "cost_today": cost(name, sum(today.values())), "cost_month": cost(name, sum(this_month.values())),
            })  # fmt: skip
        keys: dict[str, dict] = {}
        for period, tree in (("today", day), ("month", month)):
            for name, by_key in tree.items():
                for key, seconds in by_key.items():
                    if visible(key):
                        row = keys.setdefault(key, {"key": key, "seconds_today": 0.0, "seconds_month": 0.0, "cost_today": 0.0, "cost_month": 0.0})
                        row[f"seconds_{period}"] += seconds
                        row[f"cost_{period}"] += cost(name, seconds)
        tokens = [
            {"key": key, "model": model, "prompt": counts[0], "completion": counts[1]}
            for key, models in totals["tokens"].get(month_of(now), {}).items() if visible(key)
            for model, counts in sorted(models.items())
        ]  # fmt: skip
        hours = [hour_of(now - 3600 * i) for i in range(23, -1, -1)]
        chart = {name: [sum(s for k, s in totals["hours"].get(h, {}).get(name, {}).items() if visible(k)) for h in hours] for name in shown}
        in_flight = sum(self.in_flight.values()) if everything else self.in_flight.get(viewer, 0)
        return {
            "now": now,
            "viewer": viewer,
            "scope": "garden" if everything else "own",
            "gpu_time": "measured" if self.measured else "absent",
            "prices": {"as_of": PRICES_AS_OF, "source": PRICES_SOURCE},
            "pools": pools,
            "cost": {"today": sum(p["cost_today"] for p in pools), "month": sum(p["cost_month"] for p in pools)},
            "keys": sorted(keys.values(), key=lambda row: -row["seconds_month"]),
            "tokens": tokens,
            "cold_starts": [c for c in reversed(self.cold_starts) if visible(c["key"])][:10],
            "in_flight": in_flight,
            "chart": {"hours": hours, "pools": chart},
        }

    # --- metrics ---------------------------------------------------------------------------
    def collect(self) -> Iterator[CounterMetricFamily]:
        """Prometheus counters, read at scrape time (this gateway's own counts since it started)."""
        gpu = CounterMetricFamily("garden_gpu_seconds", "GPU container-seconds of each pool, measured by this gateway", labels=["pool", "gpu"])
        by_key = CounterMetricFamily("garden_gpu_seconds_by_key", f"Container-seconds attributed to keys ({WARM}: no key caused them)", labels=["key", "pool"])
        dollars = CounterMetricFamily("garden_gpu_cost_dollars", f"Estimated GPU cost (prices as of {PRICES_AS_OF}, {PRICES_SOURCE})", labels=["pool", "gpu"])
        dollars_by_key = CounterMetricFamily("garden_gpu_cost_dollars_by_key", "Estimated GPU cost attributed to keys", labels=["key", "pool"])
        colds = CounterMetricFamily("garden_cold_starts", "Requests that waited for their GPU container to start, by pool and key", labels=["pool", "key"])
        for name, pool in self.meter.pools.items():
            if self.measured:
                gpu.add_metric([name, pool.gpu], pool.seconds)
                dollars.add_metric([name, pool.gpu], pool.seconds * self.prices.get(name, 0.0) / 3600)
            for key, seconds in pool.by_key.items():
                by_key.add_metric([key, name], seconds)
                dollars_by_key.add_metric([key, name], seconds * self.prices.get(name, 0.0) / 3600)
        for (pool, key), count in self.cold_start_counts.items():
            colds.add_metric([pool, key], count)
        yield from (gpu, by_key, dollars, dollars_by_key, colds)


class MeteredBackend:
    """A pool's transport, with each request counted in flight on the pool while it lasts."""

    def __init__(self, garden: Garden, pool: str, backend: Backend) -> None:
        self.garden = garden
        self.pool = pool
        self.backend = backend

    async def open(self, request: RequestFrame) -> BackendResponse:
        if request["method"] == "GET" and route_of(request["path"]) == "/api/ps":
            return await self.backend.open(request)  # asking what is loaded is nobody's use of the GPU
        meter, key = self.garden.meter, CURRENT_KEY.get()
        waking = meter.begin(self.pool, key, self.garden.clock())
        try:
            response = await self.backend.open(request)
        except BaseException:
            meter.end(self.pool, key, waking, self.garden.clock())
            raise
        meter.head(self.pool, waking)
        return _Metered(response, self, key)

    async def aclose(self) -> None:
        await self.backend.aclose()


class _Metered:
    """The response, which ends the request's time in flight when it is released."""

    def __init__(self, response: BackendResponse, owner: MeteredBackend, key: str) -> None:
        self._response, self._owner, self._key = response, owner, key
        self.status, self.headers = response.status, response.headers
        self.served_by, self.cold_start, self.pool = response.served_by, response.cold_start, response.pool
        self._ended = False

    @property
    def reruns(self) -> int:  # counted while the body is sent (preemptions)
        return self._response.reruns

    async def send_body(self, sink: BodySink) -> None:
        await self._response.send_body(sink)

    async def aclose(self) -> None:
        try:
            await self._response.aclose()
        finally:
            if not self._ended:
                self._ended = True
                self._owner.garden.meter.end(self._owner.pool, self._key, False, self._owner.garden.clock())
