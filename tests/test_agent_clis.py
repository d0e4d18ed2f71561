"""Claude Code and Codex themselves through the gateway, in front of the stand-in: warm,
through a slow start, and with an unknown model during one (each shows Ollama's message).
Needs `npm ci --prefix tests/agents` (about 850 MB: each CLI is a native binary shipped as
an npm optional dependency); skipped without it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from backend.relay import OllamaRelay
from proxy.transport import InProcessBackend
from tests.ollama_standin import tokens

BIN = Path(__file__).parent / "agents" / "node_modules" / ".bin"
CLAUDE, CODEX = BIN / "claude", BIN / "codex"
pytestmark = [
    pytest.mark.skipif(
        shutil.which("node") is None or not (CLAUDE.exists() and CODEX.exists()),
        reason="needs node and `npm ci --prefix tests/agents` (Claude Code and Codex)",
    ),
    pytest.mark.usefixtures("fast_keepalive"),
]

KEY = "sk-agent-test"
REPLY = "".join(tokens(8))  # the stand-in's answer: 8 tokens
EARLY, START = 1.0, 3.0


@pytest.fixture
async def warm(standin, start_gateway):
    url, state = standin
    return await start_gateway(InProcessBackend(OllamaRelay(url)), gateway_api_keys=(KEY,)), state


@pytest.fixture
async def cold(make_modal_garden):
    garden = await make_modal_garden(gateway_early_head_s=EARLY, gateway_api_keys=(KEY,))
    garden.method.start_delay = START
    return garden


async def run(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Run a CLI to its end (60 s at most); its exit code and its stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, env={"PATH": os.environ["PATH"], "HOME": str(cwd), **env},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode, output.decode("utf-8", "replace")


async def claude(gateway: str, model: str, home: Path) -> tuple[int, str]:
    env = {
        "ANTHROPIC_BASE_URL": gateway + "/ollama",
        "ANTHROPIC_API_KEY": KEY,
        "ANTHROPIC_MODEL": model,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": model,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",  # offline: no telemetry, no update check
        "DISABLE_AUTOUPDATER": "1",
    }
    return await run([str(CLAUDE), "-p", "Why is the sky blue?"], env, home)


async def codex(gateway: str, model: str, home: Path) -> tuple[int, str]:
    codex_home = home / ".codex"
    codex_home.mkdir(exist_ok=True)
    (codex_home / "config.toml").write_text(
        f'model = "{model}"\nmodel_provider = "garden"\n\n[model_providers.garden]\nname = "garden"\n'
        f'base_url = "{gateway}/ollama/v1"\nenv_key = "GARDEN_API_KEY"\nwire_api = "responses"\n'
        "stream_max_retries = 0\nrequest_max_retries = 0\n"
    )
    env = {"CODEX_HOME": str(codex_home), "GARDEN_API_KEY": KEY}
    return await run([str(CODEX), "exec", "--skip-git-repo-check", "Why is the sky blue?"], env, home)


@pytest.mark.parametrize("agent", [claude, codex])
async def test_each_agent_works_warm(warm, agent, tmp_path):
    gateway, state = warm
    status, output = await agent(gateway, "llama3.2", tmp_path)
    assert status == 0 and REPLY in output, output[-2000:]
    used = [seen for seen in state.seen if seen.path.partition("?")[0] in ("/v1/messages", "/v1/responses")]  # Claude Code adds ?beta=true
    assert used and all("authorization" not in {k.lower() for k in seen.headers} for seen in used)


@pytest.mark.parametrize("agent", [claude, codex])
async def test_each_agent_outlasts_a_slow_start(cold, agent, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="proxy.access")
    status, output = await agent(cold.url, "llama3.2", tmp_path)
    assert status == 0 and REPLY in output, output[-2000:]
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "proxy.access"]
    streamed = [line for line in lines if line["path"] in ("/v1/messages", "/v1/responses")]
    assert streamed[0]["early_head"] is True and streamed[0]["cold_start"] is True  # its head came early, then pings


@pytest.mark.parametrize("agent", [claude, codex])
async def test_each_agent_shows_ollamas_message_for_an_unknown_model_during_a_slow_start(cold, agent, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="proxy.access")
    status, output = await agent(cold.url, "ghost", tmp_path)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "proxy.access"]
    assert any(line.get("early_head") and line["error"] == "backend_error_in_band" for line in lines)  # Ollama's 404 came in band
    if agent is claude:  # it reads the error event's not_found_error and words it its own way
        assert "issue with the selected model (ghost). It may not exist" in output, output[-2000:]
    else:
        assert "model 'ghost' not found" in output, output[-2000:]
    assert "malformed" not in output and "stream closed before response.completed" not in output  # what a bare data: error gave
