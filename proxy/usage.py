"""GPU container time per pool, and who spent it. Pure accounting: no I/O, no clock of its own.

The rule (also in the README): a pool's container time is measured from samples of how
many containers it has up (Modal's `get_current_stats().num_total_runners`). Between two
moments the gateway looks (every sample, and every request that begins or ends on the
pool) the count is taken as it was last seen, so the set of requests in flight is fixed
within each stretch. Each stretch's container-seconds go
- to the keys with requests in flight on that pool, split by their number of requests;
- else (the idle tail until scale-down) to the key whose request on that pool came last;
- else (nobody asked since the pool was last seen asleep: a warm window, or another
  gateway's request) to `WARM`.
So, per pool, the keys' shares plus `WARM` are the pool's container time, by construction.

Usage is kept in a `Record`: plain dicts (they cross pickling and JSON), per UTC day and
month, per pool and key, and per UTC hour for the last day's chart.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any

WARM = "(warm)"  # pool time no key caused (no key name can be this: see config.KEY_NAME)
NO_KEY = "(no key)"  # the key name of a garden without API keys

Record = dict[str, Any]  # {"gpu": {period: {pool: {key: s}}}, "tokens": {period: {key: {model: [p, c]}}}, "hours": {hour: {pool: {key: s}}}}


def day_of(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def month_of(ts: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(ts))


def hour_of(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H", time.gmtime(ts))


def new_record() -> Record:
    # "last": pool -> when this gateway's last request on it began (for the tail's owner);
    # "in_flight": pool -> its requests in flight there (as of its last sync).
    return {"v": 1, "updated": 0.0, "gpu": {}, "tokens": {}, "hours": {}, "last": {}, "in_flight": {}}


def _add(tree: dict, path: tuple[str, ...], amount: float) -> None:
    for step in path[:-1]:
        tree = tree.setdefault(step, {})
    tree[path[-1]] = tree.get(path[-1], 0.0) + amount


def add_gpu(record: Record, ts: float, pool: str, key: str, seconds: float) -> None:
    for period in (day_of(ts), month_of(ts)):
        _add(record["gpu"], (period, pool, key), seconds)
    _add(record["hours"], (hour_of(ts), pool, key), seconds)


def add_tokens(record: Record, ts: float, key: str, model: str, prompt: int, completion: int) -> None:
    for period in (day_of(ts), month_of(ts)):
        counts = record["tokens"].setdefault(period, {}).setdefault(key, {}).setdefault(model, [0, 0])
        counts[0] += prompt
        counts[1] += completion


def _merge_into(into: dict, tree: dict) -> None:
    for name, value in tree.items():
        if isinstance(value, dict):
            _merge_into(into.setdefault(name, {}), value)
        elif isinstance(value, list):
            mine = into.setdefault(name, [0] * len(value))
            for i, v in enumerate(value):
                mine[i] += v
        else:
            into[name] = into.get(name, 0) + value


def merge(records: list[Record]) -> Record:
    """The sum of several gateways' records."""
    total = new_record()
    for record in records:
        for part in ("gpu", "tokens", "hours"):
            _merge_into(total[part], record.get(part) or {})
        total["updated"] = max(total["updated"], record.get("updated") or 0.0)
        for pool, at in (record.get("last") or {}).items():
            total["last"][pool] = max(total["last"].get(pool, 0.0), at)
        for pool, count in (record.get("in_flight") or {}).items():
            total["in_flight"][pool] = total["in_flight"].get(pool, 0) + count
    return total


def prune(record: Record, now: float, days: int = 40) -> None:
    """Drop days older than `days`, months but this and the last, hours older than 48."""
    oldest_day = day_of(now - days * 86400)
    months = {month_of(now), month_of(now - 32 * 86400)}
    oldest_hour = hour_of(now - 48 * 3600)
    for part in ("gpu", "tokens"):
        for period in list(record[part]):
            if (len(period) == 10 and period < oldest_day) or (len(period) == 7 and period not in months):
                del record[part][period]
    for hour in [h for h in record["hours"] if h < oldest_hour]:
        del record["hours"][hour]


@dataclass
class PoolMeter:
    """What the gateway knows of one pool right now."""

    name: str
    gpu: str
    in_flight: collections.Counter = field(default_factory=collections.Counter)  # key -> requests
    waking: int = 0  # requests that began while the pool was seen asleep and have no head yet
    last_key: str | None = None  # whose request came last since the pool was last seen asleep
    runners: int = 0  # containers up at the last look
    seen_at: float | None = None  # when `runners` was last accounted up to
    sampled: bool = False  # a sample has been taken at least once
    last_at: float = 0.0  # when this gateway's last request on it began
    asleep_at: float = 0.0  # when it was last seen with no container up
    seconds: float = 0.0  # container-seconds counted by this gateway (lifetime)
    by_key: collections.Counter = field(default_factory=collections.Counter)  # key -> seconds (lifetime)

    @property
    def state(self) -> str:
        if self.waking:
            return "waking"
        return "awake" if self.runners > 0 else "asleep"

    @property
    def hot(self) -> bool:
        """Might have a container up: worth a sample at the short interval."""
        return self.runners > 0 or bool(self.in_flight) or self.waking > 0


class Elsewhere:
    """What the other gateway containers know (proxy.ledger): none, by default."""

    def last_request(self, pool: str) -> float:
        """When another gateway's last request on `pool` began (0: never)."""
        return 0.0

    def in_flight(self, pool: str) -> int:
        """The other gateways' requests in flight on `pool` (as of their last sync)."""
        return 0

    def charges_warm(self) -> bool:
        """Is this the one gateway that charges `WARM` time (so it is counted once)?"""
        return True


class Meter:
    """Container time per pool, attributed to keys, written into `record` as it is measured.

    With several gateway containers, each charges only what is its own: time while its
    requests are in flight, the idle tail when its request on the pool came last of all
    (as of the last sync), and `WARM` time only in the one gateway `elsewhere` names.
    """

    def __init__(self, pools: dict[str, str], record: Record | None = None, elsewhere: Elsewhere | None = None) -> None:
        self.pools = {name: PoolMeter(name, gpu) for name, gpu in pools.items()}
        self.record = record if record is not None else new_record()
        self.elsewhere = elsewhere or Elsewhere()

    def _shares(self, pool: PoolMeter, seconds: float) -> list[tuple[str, float]]:
        # Requests in flight on other gateways take their share there: together it adds up.
        elsewhere = self.elsewhere.in_flight(pool.name)
        if pool.in_flight:
            requests = sum(pool.in_flight.values()) + elsewhere
            return [(key, seconds * n / requests) for key, n in pool.in_flight.items()]
        if elsewhere:
            return []  # in flight on another gateway only: its time to charge
        later = self.elsewhere.last_request(pool.name)
        if pool.last_key is not None:
            return [] if later > pool.last_at else [(pool.last_key, seconds)]
        return [(WARM, seconds)] if later <= pool.asleep_at and self.elsewhere.charges_warm() else []

    def _account(self, pool: PoolMeter, now: float) -> None:
        """The stretch since the last look, at the count seen then, to whom it belongs."""
        if pool.seen_at is not None and now > pool.seen_at and pool.runners > 0:
            shares = self._shares(pool, pool.runners * (now - pool.seen_at))
            pool.seconds += sum(share for _, share in shares)
            for key, share in shares:
                pool.by_key[key] += share
                add_gpu(self.record, now, pool.name, key, share)
        pool.seen_at = now if pool.seen_at is None or now > pool.seen_at else pool.seen_at

    def catch_up(self, now: float) -> None:
        """Account every pool up to `now` (for a report, or before the gateway stops)."""
        for pool in self.pools.values():
            self._account(pool, now)

    def begin(self, name: str, key: str, now: float) -> bool:
        """A request of `key` goes to pool `name`. True if it may wake the pool."""
        pool = self.pools[name]
        self._account(pool, now)
        pool.in_flight[key] += 1
        self.record.setdefault("in_flight", {})[name] = sum(pool.in_flight.values())  # for the other gateways
        pool.last_key = key
        pool.last_at = self.record["last"][name] = now
        waking = pool.runners == 0
        pool.waking += waking
        return waking

    def head(self, name: str, waking: bool) -> None:
        """The request's response head came: the pool is up."""
        if waking:
            self.pools[name].waking -= 1

    def end(self, name: str, key: str, waking: bool, now: float) -> None:
        pool = self.pools[name]
        self._account(pool, now)
        pool.in_flight[key] -= 1
        if pool.in_flight[key] <= 0:
            del pool.in_flight[key]
        self.record.setdefault("in_flight", {})[name] = sum(pool.in_flight.values())
        self.head(name, waking)

    def sample(self, name: str, runners: int, now: float) -> None:
        """Modal says `runners` containers of pool `name` are up at `now`."""
        pool = self.pools[name]
        self._account(pool, now)
        pool.runners = runners
        pool.sampled = True
        if runners == 0 and not pool.in_flight:
            pool.last_key = None  # asleep: whoever wakes it next is who it is charged to
            pool.asleep_at = now
