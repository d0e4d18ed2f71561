"""The official JavaScript clients (ollama-js, openai-node) through the gateway, after a
cold start: what a Node app or a bundled web app sees. Run with node from tests/js/."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from proxy import forward

JS = Path(__file__).parent / "js"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(
    NODE is None or not (JS / "node_modules" / "ollama").is_dir(),
    reason="needs node and `npm ci --prefix tests/js` (CI installs both when node is available)",
)

EARLY, START = 0.2, 1.5


@pytest.fixture
async def cold(make_modal_garden, monkeypatch):
    monkeypatch.setattr(forward, "KEEPALIVE_INTERVAL", 0.3)
    garden = await make_modal_garden(gateway_early_head_s=EARLY)
    garden.method.start_delay = START
    return garden


async def run_js(kind: str, url: str, model: str) -> dict:
    process = await asyncio.create_subprocess_exec(
        NODE, "clients.mjs", kind, url, model, cwd=JS, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NODE_NO_WARNINGS": "1"},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return json.loads(out.decode().strip().splitlines()[-1])


async def test_ollama_js_streams_a_chat_after_a_cold_start(cold):
    result = await run_js("ollama-chat", cold.url + "/ollama", "llama3.2")
    assert result["ok"] and result["parts"] == 9 and result["text"].startswith("The sky is blue")
    assert result["warnings"] == []  # the keep-alive spaces never made a line it could not parse


async def test_ollama_js_raises_ollamas_message_for_an_unknown_model_after_a_cold_start(cold):
    result = await run_js("ollama-chat", cold.url + "/ollama", "ghost")
    assert not result["ok"] and result["message"] == "model 'ghost' not found"


async def test_openai_node_streams_a_chat_after_a_cold_start(cold):
    result = await run_js("openai-chat", cold.url + "/ollama/v1", "llama3.2")
    assert result["ok"] and result["text"].startswith("The sky is blue")


async def test_openai_node_raises_an_api_error_for_an_unknown_model_after_a_cold_start(cold):
    result = await run_js("openai-chat", cold.url + "/ollama/v1", "ghost")
    assert not result["ok"] and result["name"] == "APIError" and result["message"] == "model 'ghost' not found"
