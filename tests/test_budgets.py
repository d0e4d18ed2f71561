"""Per-key GPU budgets (proxy.budgets): 429 in the API's shape with the budget and its
reset, never a cut stream, kept across a gateway restart and shared by gateways."""

from __future__ import annotations

import asyncio
import calendar
import json

import aiohttp
import pytest

from config import ConfigError, KeyPolicy, load_settings
from proxy.budgets import Spent, budget_refusal, next_day, next_month
from proxy.ledger import DictUsageStore
from tests.conftest import wait_for
from tests.fake_modal import FakeModalDict

KEYS = ("alice:sk-alice", "bob:sk-bob")
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
NOW = float(calendar.timegm((2026, 12, 31, 22, 30, 0)))
TINY = json.dumps({"alice": {"gpu_hours_per_day": 0.0001}})  # 0.36 GPU-seconds a day


def test_a_used_up_budget_is_named_with_its_reset_and_retry_after():
    policy = KeyPolicy(gpu_hours_per_day=1, usd_per_month=50)
    assert budget_refusal("alice", policy, Spent(seconds_day=3599, usd_month=10), NOW) is None
    day = budget_refusal("alice", policy, Spent(seconds_day=3600), NOW)
    assert "gpu_hours_per_day" in day.message and "resets at 2027-01-01T00:00:00Z" in day.message
    assert day.retry_after == 5400
    month = budget_refusal("alice", policy, Spent(usd_month=50.01), NOW - 86400 * 3)
    assert "usd_per_month" in month.message and "2027-01-01T00:00:00Z" in month.message
    assert next_day(NOW) == next_month(NOW) == calendar.timegm((2027, 1, 1, 0, 0, 0))


def test_budgets_in_the_key_policy_are_checked_at_start():
    settings = load_settings({"GATEWAY_API_KEYS": ",".join(KEYS), "GATEWAY_KEY_POLICY": '{"alice": {"usd_per_month": 20, "gpu_hours_per_day": 1.5}}'})
    assert dict(settings.gateway_key_policy)["alice"] == KeyPolicy(gpu_hours_per_day=1.5, usd_per_month=20.0)
    for bad in ('{"alice": {"usd_per_month": 0}}', '{"alice": {"usd_per_day": "5"}}', '{"alice": {"gpu_hours_per_week": 1}}'):
        with pytest.raises(ConfigError, match="GATEWAY_KEY_POLICY"):
            load_settings({"GATEWAY_API_KEYS": ",".join(KEYS), "GATEWAY_KEY_POLICY": bad})


def options(store: FakeModalDict, sync: float = 0.1) -> dict:
    return {"store": DictUsageStore(store), "fast_interval": 0.01, "idle_interval": 1.0, "sync_interval": sync}


def policy():
    return load_settings({"GATEWAY_API_KEYS": ",".join(KEYS), "GATEWAY_KEY_POLICY": TINY}).gateway_key_policy


async def post(http: aiohttp.ClientSession, url: str, key: str, path: str = "/ollama/api/chat") -> tuple[int, dict, bytes]:
    async with http.post(url + path, json=CHAT, headers={"Authorization": f"Bearer {key}"}) as response:
        return response.status, dict(response.headers), await response.read()


async def spend(garden, http) -> None:
    """alice wakes the pool and keeps it up past her budget; the pool scales down."""
    status, _, body = await post(http, garden.url, "sk-alice")
    assert status == 200 and b'"done": true' in body
    assert await wait_for(lambda: garden.method.containers == 0, 5)
    assert await wait_for(lambda: garden.garden.meter.pools["default"].runners == 0, 2)


async def test_a_key_over_its_budget_gets_429_with_the_reset_and_a_stream_is_never_cut(make_modal_garden):
    store = FakeModalDict()
    garden = await make_modal_garden(metered=options(store), scaledown=0.3, gateway_api_keys=KEYS, gateway_key_policy=policy())
    garden.method.start_delay = 0.2
    garden.state.token_delay = 0.1  # an answer of about a second: alice passes her 0.36 s while it streams
    async with aiohttp.ClientSession() as http:
        await spend(garden, http)  # it streamed to its end although she went over meanwhile
        calls = len(garden.method.calls)
        status, headers, body = await post(http, garden.url, "sk-alice")
        assert status == 429
        message = json.loads(body)["error"]
        assert "alice" in message and "gpu_hours_per_day" in message and "resets at " in message and "T00:00:00Z" in message
        assert 1 <= int(headers["Retry-After"]) <= 86400
        status, _, body = await post(http, garden.url, "sk-alice", "/ollama/v1/chat/completions")
        assert status == 429 and "gpu_hours_per_day" in json.loads(body)["error"]["message"]  # OpenAI's shape on /v1
        assert len(garden.method.calls) == calls  # refused before reaching a GPU
        status, _, _ = await post(http, garden.url, "sk-bob")  # bob has no budget
        assert status == 200


async def test_a_restarted_gateway_keeps_the_spent_amount_and_two_gateways_share_it(make_modal_garden):
    store = FakeModalDict()  # the usage Dict: outlives gateways
    first = await make_modal_garden(metered=options(store), scaledown=0.3, gateway_api_keys=KEYS, gateway_key_policy=policy())
    first.method.start_delay = 0.5
    async with aiohttp.ClientSession() as http:
        # A second gateway, running alongside: it sees alice's spending once both have synced.
        second = await make_modal_garden(metered=options(store), gateway_api_keys=KEYS, gateway_key_policy=policy())
        await spend(first, http)
        assert (await post(http, first.url, "sk-alice"))[0] == 429
        assert await wait_for(lambda: second.garden.spent("alice").seconds_day >= 0.36, 3)
        status, _, body = await post(http, second.url, "sk-alice")
        assert status == 429 and "gpu_hours_per_day" in json.loads(body)["error"]
        assert second.method.calls == []
        # A gateway started after the first one stopped (its last sync is in the Dict; it
        # never ran its clean-up): alice is still over.
        await asyncio.sleep(0.15)
        for task in first.garden._tasks:
            task.cancel()
        restarted = await make_modal_garden(metered=options(store), gateway_api_keys=KEYS, gateway_key_policy=policy())
        status, _, _ = await post(http, restarted.url, "sk-alice")
        assert status == 429
        assert restarted.garden.spent("alice").seconds_day == pytest.approx(first.garden.spent("alice").seconds_day, rel=0.05)
