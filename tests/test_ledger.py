"""The shared usage ledger (proxy.ledger): one record per gateway, summed; a gone
gateway's record adopted by exactly one live one; a JSON file locally, a Dict on Modal."""

from __future__ import annotations

import calendar

import pytest

from proxy.ledger import STALE_AFTER, DictUsageStore, FileUsageStore, MemoryUsageStore, SharedLedger
from proxy.usage import Meter, add_gpu, day_of
from tests.fake_modal import FakeModalDict

T0 = float(calendar.timegm((2026, 12, 8, 3, 0, 0)))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def spent(ledger: SharedLedger, key: str = "alice") -> float:
    return ledger.totals()["gpu"].get(day_of(T0), {}).get("p", {}).get(key, 0.0)


@pytest.mark.parametrize("kind", ["file", "dict"])
async def test_two_gateways_see_each_others_spending_and_a_restart_keeps_it(tmp_path, kind):
    store = FileUsageStore(tmp_path / "usage.json") if kind == "file" else DictUsageStore(FakeModalDict())
    clock = Clock(T0)
    a, b = SharedLedger(store, "a", clock), SharedLedger(store, "b", clock)
    add_gpu(a.own, T0, "p", "alice", 30.0)
    add_gpu(b.own, T0, "p", "alice", 12.0)
    await a.sync()
    await b.sync()
    await a.sync()
    assert spent(a) == spent(b) == 42.0
    # `a` stops without a word; a new gateway sees what it spent, and once `a` has been
    # silent long enough, exactly one live gateway adopts its record.
    restarted = SharedLedger(store, "c", clock)
    await restarted.sync()
    assert spent(restarted) == 42.0
    for _ in range(2):  # b and the new one keep syncing; a does not
        clock.now += STALE_AFTER / 2 + 1
        await b.sync()
        await restarted.sync()
    assert spent(b) == spent(restarted) == 42.0
    keys = [k for k, _ in await store.items()]
    assert sorted(keys) == ["usage:b", "usage:c"]


async def test_the_file_store_survives_a_new_process_reading_it(tmp_path):
    path = tmp_path / "garden" / "usage.json"
    ledger = SharedLedger(FileUsageStore(path), "a", Clock(T0))
    add_gpu(ledger.own, T0, "p", "alice", 5.0)
    await ledger.sync()
    again = SharedLedger(FileUsageStore(path), "b", Clock(T0 + 1))
    await again.sync()
    assert spent(again) == 5.0
    path.write_text("not json")
    broken = SharedLedger(FileUsageStore(path), "c", Clock(T0 + 2))
    await broken.sync()  # a damaged file is started again, not a crash
    assert spent(broken) == 0.0


async def test_two_gateways_with_requests_in_flight_on_one_container_charge_its_time_once():
    # Found by review: each gateway charged the whole container time to its own requests.
    store, now = MemoryUsageStore(), [T0]
    a, b = SharedLedger(store, "a", lambda: now[0]), SharedLedger(store, "b", lambda: now[0])
    meter_a, meter_b = Meter({"p": "L4"}, a.own, elsewhere=a), Meter({"p": "L4"}, b.own, elsewhere=b)
    for meter, key in ((meter_a, "alice"), (meter_b, "bob")):
        meter.sample("p", 1, T0)
        meter.begin("p", key, T0)
    await a.sync(), await b.sync(), await a.sync()  # each sees the other's request in flight
    for meter, key in ((meter_a, "alice"), (meter_b, "bob")):
        meter.sample("p", 1, T0 + 10)
        meter.end("p", key, False, T0 + 10)
    now[0] = T0 + 10
    await b.sync(), await a.sync()
    charged = a.totals()["gpu"][day_of(T0)]["p"]
    assert charged == pytest.approx({"alice": 5.0, "bob": 5.0}) and sum(charged.values()) == pytest.approx(10.0)
