"""The garden's page (proxy.dashboard): served at / under a strict CSP, nothing from other
sites; its JSON behind the key, a key with an allowlist seeing only its own usage."""

from __future__ import annotations

import dataclasses
import re

import aiohttp
import pytest

from backend.relay import OllamaRelay
from config import load_settings
from proxy.app import create_app
from proxy.dashboard import CSP, STATIC
from proxy.transport import InProcessBackend
from tests.conftest import serve_gateway

KEYS = ("owner:sk-owner", "friend:sk-friend")
POLICY = '{"friend": {"models": ["llama3.2"]}}'
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def keyed(standin, start_gateway):
    url, _ = standin
    policy = load_settings({"GATEWAY_API_KEYS": ",".join(KEYS), "GATEWAY_KEY_POLICY": POLICY}).gateway_key_policy
    return await start_gateway(InProcessBackend(OllamaRelay(url)), gateway_api_keys=KEYS, gateway_key_policy=policy, ollama_model_list=("llama3.2",))


async def test_the_page_and_its_files_are_public_under_a_strict_csp_and_fetch_nothing_elsewhere(keyed):
    async with aiohttp.ClientSession() as http:
        for path, kind in (("/", "text/html"), ("/garden/garden.js", "text/javascript"), ("/garden/garden.css", "text/css")):
            async with http.get(keyed + path) as response:
                assert response.status == 200, path
                assert response.content_type == kind
                assert response.headers["Content-Security-Policy"] == CSP
                assert response.headers["X-Content-Type-Options"] == "nosniff"
                body = await response.text()
                assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", body), path  # no other site, only the SVG namespace
    assert "default-src 'none'" in CSP and "'unsafe-inline'" not in CSP and "connect-src 'self'" in CSP
    html = (STATIC / "garden.html").read_text()
    assert "<script>" not in html and " style=" not in html  # nothing inline for the CSP to block


async def test_usage_needs_a_key_and_a_key_with_an_allowlist_sees_only_its_own(keyed):
    async with aiohttp.ClientSession() as http:
        for key in ("sk-owner", "sk-friend"):
            async with http.post(keyed + "/ollama/api/chat", json=CHAT, headers={"Authorization": f"Bearer {key}"}) as response:
                assert response.status == 200
                await response.read()
        async with http.get(keyed + "/garden/usage") as response:
            assert response.status == 401
        async with http.get(keyed + "/garden/usage", headers={"Authorization": "Bearer sk-owner"}) as response:
            everything = await response.json()
        async with http.get(keyed + "/garden/usage", headers={"Authorization": "Bearer sk-friend"}) as response:
            assert response.status == 200
            own = await response.json()
        async with http.get(keyed + "/metrics", headers={"Authorization": "Bearer sk-friend"}) as response:
            assert response.status == 403  # still the owner's
    assert everything["scope"] == "garden" and {t["key"] for t in everything["tokens"]} == {"owner", "friend"}
    assert own["scope"] == "own" and own["viewer"] == "friend" and [t["key"] for t in own["tokens"]] == ["friend"]
    # Local mode: no GPU time measured, and the page says so.
    assert everything["gpu_time"] == own["gpu_time"] == "absent" and everything["pools"] == []
    assert everything["prices"]["source"] == "https://modal.com/pricing"


async def test_local_mode_keeps_usage_in_a_file_a_restarted_gateway_reads(standin, settings, tmp_path):
    url, _ = standin
    path = tmp_path / "usage.json"
    local = dataclasses.replace(settings, gateway_usage_file=str(path), ollama_model_list=("llama3.2",))
    served = await serve_gateway(create_app(InProcessBackend(OllamaRelay(url)), local))
    async with aiohttp.ClientSession() as http:
        async with http.post(served.url + "/ollama/api/chat", json=CHAT) as response:
            await response.read()
        await served.runner.cleanup()  # the gateway stops: its usage is written
        assert "llama3.2:latest" in path.read_text()
        again = await serve_gateway(create_app(InProcessBackend(OllamaRelay(url)), local))
        try:
            async with http.get(again.url + "/garden/usage") as response:
                report = await response.json()
        finally:
            await again.runner.cleanup()
    assert report["tokens"] == [{"key": "(no key)", "model": "llama3.2:latest", "prompt": 12, "completion": 8}]


async def test_a_model_the_garden_does_not_know_is_recorded_as_other(keyed, standin):
    _, state = standin
    async with aiohttp.ClientSession() as http:
        for model in ("llama3.2", "made-up-1", "made-up-2"):
            body = {**CHAT, "model": model}
            async with http.post(keyed + "/ollama/api/chat", json=body, headers={"Authorization": "Bearer sk-owner"}) as response:
                await response.read()
        async with http.get(keyed + "/garden/usage", headers={"Authorization": "Bearer sk-owner"}) as response:
            report = await response.json()
    assert {t["model"] for t in report["tokens"]} <= {"llama3.2:latest", "other"}


async def test_only_get_makes_the_page_public_a_keyless_head_is_refused(keyed):
    async with aiohttp.ClientSession() as http:
        async with http.head(keyed + "/") as response:
            assert response.status == 401  # as any keyless request (Claude Code sends one at start)
        async with http.head(keyed + "/", headers={"Authorization": "Bearer sk-owner"}) as response:
            assert response.status == 200 and response.content_type == "text/html"
        async with http.post(keyed + "/", headers={"Authorization": "Bearer sk-owner"}) as response:
            assert response.status == 405
