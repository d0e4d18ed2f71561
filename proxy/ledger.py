"""Usage shared by every gateway container, kept across restarts and redeploys.

Each gateway process keeps its own `Record` (proxy.usage) and writes it whole, under its
own key, to a store every few seconds; it reads the others' to know the garden's totals
(budgets are decided on those). No key is ever written by two processes, so there is no
lost update without any lock (a `modal.Dict` has no atomic add).

A record whose writer has stopped writing (a gateway restarted, scaled down or
redeployed) is adopted: one live gateway `pop`s it (only one pop gets it) and adds it to
its own. So spent amounts survive restarts, and no entry sits unread long enough to hit
the Dict's expiry (7 days without a read or write).

Stores: a `modal.Dict` on Modal (`DictUsageStore`); locally a JSON file
(`FileUsageStore`, GATEWAY_USAGE_FILE, shared by gateways on one machine through a lock)
or, by default, memory (`MemoryUsageStore`: lost when the gateway stops).
"""

from __future__ import annotations

import asyncio
import copy
import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from proxy.usage import Elsewhere, Record, merge, new_record, prune

log = logging.getLogger(__name__)

PREFIX = "usage:"
STALE_AFTER = 600.0  # seconds without a write after which a record's gateway is taken as gone


class UsageStore(Protocol):
    async def items(self) -> list[tuple[str, Any]]: ...
    async def put(self, key: str, value: Record) -> None: ...
    async def pop(self, key: str) -> Any: ...


class DictUsageStore:
    """A `modal.Dict` (`.items.aio()`, `.put.aio()`, `.pop.aio()`), for the usage records only."""

    def __init__(self, store: Any) -> None:
        self.store = store

    async def items(self) -> list[tuple[str, Any]]:
        return [(k, v) async for k, v in self.store.items.aio() if isinstance(k, str) and k.startswith(PREFIX)]

    async def put(self, key: str, value: Record) -> None:
        await self.store.put.aio(key, value)

    async def pop(self, key: str) -> Any:
        return await self.store.pop.aio(key, None)


class MemoryUsageStore:
    """In this process only (the default locally): gone when the gateway stops."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    async def items(self) -> list[tuple[str, Any]]:
        return [(k, json.loads(v)) for k, v in self.data.items()]

    async def put(self, key: str, value: Record) -> None:
        self.data[key] = json.dumps(value)

    async def pop(self, key: str) -> Any:
        value = self.data.pop(key, None)
        return None if value is None else json.loads(value)


class FileUsageStore:
    """One JSON file ({key: record}), each change under an exclusive lock, so that several
    gateways on one machine share it; written through a temporary file and a rename."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    def _change(self, change: Callable[[dict], Any], write: bool = True) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = json.loads(self.path.read_text()) if self.path.exists() else {}
            except ValueError:
                log.error("usage file %s is not JSON: starting it again", self.path)
                data = {}
            result = change(data)
            if write:
                temporary = self.path.with_name(self.path.name + ".tmp")
                temporary.write_text(json.dumps(data, separators=(",", ":")))
                os.replace(temporary, self.path)
            return result

    async def items(self) -> list[tuple[str, Any]]:
        return await asyncio.to_thread(self._change, lambda data: list(data.items()), False)

    async def put(self, key: str, value: Record) -> None:
        await asyncio.to_thread(self._change, lambda data: data.__setitem__(key, value))

    async def pop(self, key: str) -> Any:
        return await asyncio.to_thread(self._change, lambda data: data.pop(key, None))


class SharedLedger(Elsewhere):
    """This gateway's record (`own`, written to by the meter) and everyone else's; as
    the meter's `Elsewhere`, what the other gateways did (as of the last sync)."""

    def __init__(self, store: UsageStore, instance: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.key = PREFIX + (instance or uuid.uuid4().hex[:16])
        self.clock = clock
        self.own: Record = new_record()
        self.others: Record = new_record()
        self.live: list[str] = []  # the other gateways writing now

    def last_request(self, pool: str) -> float:
        return self.others["last"].get(pool, 0.0)

    def in_flight(self, pool: str) -> int:
        return int(self.others["in_flight"].get(pool, 0))

    def charges_warm(self) -> bool:
        return all(self.key < other for other in self.live)  # the first by name: any one will do

    async def sync(self) -> None:
        """Write our record; read the others' (adopting any whose gateway is gone)."""
        now = self.clock()
        prune(self.own, now)
        self.own["updated"] = now
        # A copy: Modal pickles the value on its own thread while this loop goes on changing ours.
        await self.store.put(self.key, copy.deepcopy(self.own))
        others, live, adopted = [], [], False
        for key, record in await self.store.items():
            if key == self.key or not isinstance(record, dict):
                continue
            if now - (record.get("updated") or 0.0) > STALE_AFTER:
                gone = await self.store.pop(key)
                if isinstance(gone, dict):  # we won it: it is ours now
                    log.info("usage of a stopped gateway (%s) adopted", key)
                    self._adopt(gone)
                    adopted = True
                continue
            others.append(record)
            live.append(key)
        self.others, self.live = merge(others), live
        if adopted:  # stored at once: it is in no other record now
            await self.store.put(self.key, copy.deepcopy(self.own))

    def _adopt(self, record: Record) -> None:
        merged = merge([self.own, record])
        for part in ("gpu", "tokens", "hours"):  # in place: the meter writes into self.own
            self.own[part].clear()
            self.own[part].update(merged[part])

    def totals(self) -> Record:
        return merge([self.own, self.others])
