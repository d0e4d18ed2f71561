"""GPU time through the Modal-like seam (proxy.garden): containers that start, serve and
scale down under a scripted load of two keys, measured by the gateway from Modal's
container counts, attributed to keys, counted in metrics."""

from __future__ import annotations

import asyncio
import logging
import re

import aiohttp
import pytest

from config import KeyPolicy, Pool
from proxy.usage import WARM
from tests.conftest import wait_for

KEYS = ("alice:sk-alice", "bob:sk-bob")
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
FAST = {"fast_interval": 0.01, "idle_interval": 0.5, "sync_interval": 0.2}


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus text `text`; 0 if absent."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.partition("}")[0]))
            if found == labels:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def chat(http: aiohttp.ClientSession, url: str, key: str, agent: str = "garden-test/1") -> None:
    headers = {"Authorization": f"Bearer {key}", "User-Agent": agent}
    async with http.post(url + "/ollama/api/chat", json=CHAT, headers=headers) as response:
        assert response.status == 200, await response.text()
        await response.read()


@pytest.fixture
async def metered(make_modal_garden):
    garden = await make_modal_garden(metered=FAST, scaledown=0.8, gateway_api_keys=KEYS, ollama_model_list=("llama3.2",))
    garden.method.start_delay = 0.3
    garden.state.token_delay = 0.04  # 8 tokens: a request lasts about a third of a second
    return garden


async def test_gpu_seconds_match_the_seams_container_seconds_and_keys_shares_add_up(metered, caplog):
    caplog.set_level(logging.INFO, logger="proxy.garden")
    method, garden = metered.method, metered.garden
    async with aiohttp.ClientSession() as http:
        # alice wakes the pool; bob joins while her answer streams; both end, the pool idles.
        first = asyncio.create_task(chat(http, metered.url, "sk-alice", "alice-ui/2"))
        await asyncio.sleep(0.4)
        await asyncio.gather(first, chat(http, metered.url, "sk-bob"), chat(http, metered.url, "sk-alice"))
        assert await wait_for(lambda: method.containers == 0, 5)  # scaled down
        await asyncio.sleep(0.1)
        # bob wakes it again, alone.
        await chat(http, metered.url, "sk-bob", "bob-agent/0.1")
        assert await wait_for(lambda: method.containers == 0, 5)
        assert await wait_for(lambda: garden.meter.pools["default"].runners == 0, 2)  # the gateway saw it
        async with http.get(metered.url + "/metrics", headers={"Authorization": "Bearer sk-alice"}) as response:
            text = await response.text()
    assert method.starts == 2
    seam = method.container_seconds
    measured = metric(text, "garden_gpu_seconds_total", gpu="A100-40GB", pool="default")
    assert seam > 2.0
    assert measured == pytest.approx(seam, rel=0.05), (measured, seam)
    by_key = {key: metric(text, "garden_gpu_seconds_by_key_total", key=key, pool="default") for key in ("alice", "bob", WARM)}
    assert by_key["alice"] > 0.3 and by_key["bob"] > 0.8  # bob: his own wake-up and its idle tail
    assert sum(by_key.values()) == pytest.approx(measured, rel=1e-6)
    assert metric(text, "garden_gpu_cost_dollars_total", gpu="A100-40GB", pool="default") == pytest.approx(measured * 2.10 / 3600, rel=1e-6)
    dollars = {key: metric(text, "garden_gpu_cost_dollars_by_key_total", key=key, pool="default") for key in ("alice", "bob")}
    assert dollars == pytest.approx({key: by_key[key] * 2.10 / 3600 for key in ("alice", "bob")}, rel=1e-6)
    # Each cold start names the key that caused it, with model, route, client and wait.
    assert metric(text, "garden_cold_starts_total", key="alice", pool="default") == 1
    assert metric(text, "garden_cold_starts_total", key="bob", pool="default") == 1
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cold start")]
    assert len(logged) == 2
    assert "by key alice" in logged[0] and "llama3.2:latest" in logged[0] and "api/chat" in logged[0] and "alice-ui/2" in logged[0]
    assert "by key bob" in logged[1] and "bob-agent/0.1" in logged[1]


async def test_the_usage_report_and_the_stored_record_agree_with_the_meter(metered):
    async with aiohttp.ClientSession() as http:
        await chat(http, metered.url, "sk-alice")
        assert await wait_for(lambda: metered.method.containers == 0, 5)
        assert await wait_for(lambda: metered.garden.meter.pools["default"].runners == 0, 2)
        async with http.get(metered.url + "/garden/usage", headers={"Authorization": "Bearer sk-bob"}) as response:
            report = await response.json()
    pool = metered.garden.meter.pools["default"]
    [row] = report["pools"]
    assert row["state"] == "asleep" and row["containers"] == 0
    assert row["seconds_today"] == pytest.approx(pool.seconds, rel=0.01)
    assert report["cost"]["today"] == pytest.approx(pool.seconds * 2.10 / 3600, rel=0.01)
    assert [k["key"] for k in report["keys"]] == ["alice"]
    assert report["tokens"] == [{"key": "alice", "model": "llama3.2:latest", "prompt": 12, "completion": 8}]
    assert report["cold_starts"][0]["key"] == "alice" and report["cold_starts"][0]["wait_s"] >= 0.3
    assert sum(report["chart"]["pools"]["default"]) == pytest.approx(pool.seconds, rel=0.01)


async def test_idle_pools_are_sampled_rarely_and_a_page_poll_reads_nothing_from_modal(make_modal_garden):
    garden = await make_modal_garden(metered={"fast_interval": 0.01, "idle_interval": 3600, "sync_interval": 3600})
    await asyncio.sleep(0.3)
    assert garden.method.stats_reads == 1  # once at start, then not for an hour while asleep
    async with aiohttp.ClientSession() as http:
        for _ in range(50):
            async with http.get(garden.url + "/garden/usage") as response:
                assert response.status == 200
    assert garden.method.stats_reads == 1 and garden.method.calls == []


class SlowStore:
    """A usage store that never answers (a Dict that hangs)."""

    async def items(self):
        await asyncio.sleep(3600)

    async def put(self, key, value):
        await asyncio.sleep(3600)

    async def pop(self, key):
        await asyncio.sleep(3600)


async def test_a_store_that_hangs_does_not_keep_the_gateway_from_listening(make_modal_garden, monkeypatch):
    from proxy.garden import Garden

    monkeypatch.setattr(Garden, "SYNC_TIMEOUT", 0.2)
    garden = await asyncio.wait_for(make_modal_garden(metered={**FAST, "store": SlowStore()}), 5)
    garden.garden.SYNC_TIMEOUT = 0.2  # for its stop too, after monkeypatch is undone
    async with aiohttp.ClientSession() as http:
        async with http.get(garden.url + "/garden/usage") as response:
            assert response.status == 200


async def test_a_preempted_run_is_metered_as_one_request_that_ends(metered, caplog):
    caplog.set_level(logging.INFO, logger="proxy.access")
    metered.method.preempt(1)  # the first run dies after its head; Modal runs it again elsewhere
    async with aiohttp.ClientSession() as http:
        await chat(http, metered.url, "sk-alice")
    pool = metered.garden.meter.pools["default"]
    assert not pool.in_flight and pool.waking == 0 and pool.last_key == "alice"
    assert len(metered.method.runs) >= 2  # the preempted run and what replaced it
    [line] = [r.getMessage() for r in caplog.records if r.name == "proxy.access"]
    assert '"reruns":1' in line


@pytest.mark.parametrize(("models", "pools"), [(("llama3.2",), ["default"]), (("qwen3:8b",), [])])
async def test_a_key_with_an_allowlist_sees_only_the_pools_of_its_models(make_modal_garden, models, pools):
    # Found by review: another pool's state (asleep, awake, containers) told a friend when
    # the owner used it.
    garden = await make_modal_garden(
        metered=FAST, gateway_api_keys=KEYS, ollama_model_list=("llama3.2",), ollama_pools=(Pool("default", "A100-40GB", ("llama3.2",)),),
        gateway_key_policy=(("bob", KeyPolicy(models=models)),),
    )
    async with aiohttp.ClientSession() as http:
        await chat(http, garden.url, "sk-alice")
        for key, expected in (("sk-alice", ["default"]), ("sk-bob", pools)):
            async with http.get(garden.url + "/garden/usage", headers={"Authorization": f"Bearer {key}"}) as response:
                report = await response.json()
            assert [pool["name"] for pool in report["pools"]] == expected and list(report["chart"]["pools"]) == expected
