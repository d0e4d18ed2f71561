"""The attribution rule (proxy.usage), on a scripted timeline: in-flight split, idle tail
to the last key, warm time to nobody, and per pool it all adds up."""

from __future__ import annotations

import calendar

import pytest

from proxy.usage import WARM, Elsewhere, Meter, add_tokens, day_of, merge, month_of, new_record, prune

T0 = float(calendar.timegm((2026, 12, 8, 3, 0, 0)))


def shares(meter: Meter, pool: str = "p") -> dict[str, float]:
    return {key: round(s, 6) for key, s in meter.pools[pool].by_key.items()}


def test_in_flight_time_is_split_among_the_requests_then_the_tail_goes_to_the_last_key():
    meter = Meter({"p": "L4"})
    meter.sample("p", 0, T0)
    waking = meter.begin("p", "alice", T0 + 1)  # alice wakes the pool
    assert waking and meter.pools["p"].state == "waking"
    meter.sample("p", 1, T0 + 2)  # the container is seen up (1 s after it started: not counted)
    meter.head("p", waking)
    assert meter.pools["p"].state == "awake"
    meter.begin("p", "bob", T0 + 4)  # alice alone for 2 s
    meter.end("p", "alice", False, T0 + 8)  # both for 4 s: 2 s each
    meter.end("p", "bob", False, T0 + 10)  # bob alone for 2 s
    meter.sample("p", 1, T0 + 20)  # idle tail: 10 s, to bob, whose request came last
    meter.sample("p", 0, T0 + 25)  # scaled down: the last 5 s (at the count last seen) to bob too
    assert shares(meter) == {"alice": 4.0, "bob": 19.0}
    assert meter.pools["p"].seconds == pytest.approx(23.0)
    assert meter.pools["p"].state == "asleep" and meter.pools["p"].last_key is None


def test_time_nobody_asked_for_is_warm_and_shares_add_up_to_the_pool():
    meter = Meter({"p": "A100-80GB", "q": "L4"})
    meter.sample("p", 1, T0)  # up from a warm window: no request yet
    meter.sample("p", 1, T0 + 60)
    meter.begin("p", "carol", T0 + 90)  # 30 more warm seconds
    meter.begin("p", "carol", T0 + 90)
    meter.begin("p", "dave", T0 + 90)
    meter.sample("p", 2, T0 + 93)  # 3 s x 1 container: carol 2/3, dave 1/3
    meter.end("p", "carol", False, T0 + 96)  # 3 s x 2 containers: carol 4, dave 2
    meter.end("p", "carol", False, T0 + 96)
    meter.end("p", "dave", False, T0 + 96)
    meter.sample("p", 0, T0 + 99)  # tail: 3 s x 2 to dave (his came last, at the same instant)
    assert shares(meter) == {WARM: 90.0, "carol": 6.0, "dave": 9.0}
    pool = meter.pools["p"]
    assert sum(pool.by_key.values()) == pytest.approx(pool.seconds) == pytest.approx(105.0)
    record = meter.record["gpu"][day_of(T0)]["p"]
    assert sum(record.values()) == pytest.approx(105.0) and meter.record["gpu"][month_of(T0)]["p"] == record
    assert meter.pools["q"].seconds == 0 and "q" not in meter.record["gpu"][day_of(T0)]


def test_a_pool_seen_asleep_forgets_its_last_key():
    meter = Meter({"p": "L4"})
    meter.begin("p", "alice", T0)
    meter.sample("p", 1, T0 + 1)
    meter.end("p", "alice", True, T0 + 2)
    meter.sample("p", 0, T0 + 3)
    meter.sample("p", 1, T0 + 10)  # woken by someone else (a warm window, another gateway)
    meter.sample("p", 0, T0 + 15)
    assert shares(meter) == {"alice": 2.0, WARM: 5.0}


def test_records_merge_by_adding_and_prune_old_periods():
    a, b = new_record(), new_record()
    Meter({"p": "L4"}, a).sample("p", 1, T0)
    add_tokens(a, T0, "alice", "llama3.2:latest", 10, 5)
    add_tokens(b, T0, "alice", "llama3.2:latest", 1, 2)
    add_tokens(b, T0 - 90 * 86400, "alice", "llama3.2:latest", 100, 100)
    total = merge([a, b])
    assert total["tokens"][day_of(T0)]["alice"]["llama3.2:latest"] == [11, 7]
    prune(total, T0)
    assert set(total["tokens"]) == {day_of(T0), month_of(T0)}


class OtherGateway(Elsewhere):
    def __init__(self, last: float, first: bool) -> None:
        self.last, self.first = last, first

    def last_request(self, pool: str) -> float:
        return self.last

    def charges_warm(self) -> bool:
        return self.first


def test_with_two_gateways_the_tail_and_warm_time_are_charged_once():
    # b's request came after a's: the tail is b's, so a charges nothing of it.
    a = Meter({"p": "L4"}, elsewhere=OtherGateway(last=T0 + 5, first=True))
    a.sample("p", 0, T0 - 10)
    a.begin("p", "alice", T0)
    a.sample("p", 1, T0 + 1)
    a.end("p", "alice", True, T0 + 2)
    a.sample("p", 1, T0 + 30)
    a.sample("p", 0, T0 + 40)
    assert shares(a) == {"alice": 1.0} and a.pools["p"].seconds == 1.0
    # A pool up that no gateway asked for is warm time in one gateway only.
    for first, expected in ((True, {WARM: 10.0}), (False, {})):
        meter = Meter({"p": "L4"}, elsewhere=OtherGateway(last=0.0, first=first))
        meter.sample("p", 1, T0)
        meter.sample("p", 0, T0 + 10)
        assert shares(meter) == expected
