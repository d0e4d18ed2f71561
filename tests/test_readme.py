"""README.md's example outputs are what the code prints: each one is taken from the README
and compared with what the gateway, the deploy summary or local mode produce."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys

from prometheus_client.parser import text_string_to_metric_families

from backend.summary import deploy_summary
from config import FILE_SETTINGS, load_settings
from proxy.app import health_report
from proxy.catalog import ANSWERED_HERE
from proxy.local import banner_lines
from tests.fake_ollama import REPO

README = (REPO / "README.md").read_text()
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.S | re.M)

# The garden the README deploys and then shows: its garden.env, and the key it creates.
KEY = "sk-garden-0123456789abcdef"


def fenced_blocks(text: str = README, language: str | None = None) -> list[str]:
    """The fenced blocks of `text` (of one `language`), without their list indentation."""
    blocks = []
    for match in FENCE.finditer(text):
        if language is None or match[2] == language:
            blocks.append("".join(line.removeprefix(match[1]) for line in match[3].splitlines(keepends=True)))
    return blocks


def use_it() -> str:
    return README.split("\n## Use it\n", 1)[1].split("\n## ", 1)[0]


def block_starting(first_line: str) -> str:
    """The one fenced block of README.md whose first line is `first_line`."""
    found = [block for block in fenced_blocks() if block.splitlines()[0] == first_line]
    assert len(found) == 1, f"README.md has {len(found)} blocks starting {first_line!r}"
    return found[0]


def readme_settings_file() -> dict[str, str]:
    """The garden.env of the README's deploy steps (NAME=value lines of its block)."""
    lines = block_starting("# garden.env").splitlines()[1:]
    values = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    assert set(values) <= set(FILE_SETTINGS)
    return values


def readme_lines(prefix: str) -> list[str]:
    return [line for block in fenced_blocks() for line in block.splitlines() if line.startswith(prefix)]


def test_the_deploy_summary_is_what_modal_deploy_prints_for_the_readmes_garden_env():
    summary = block_starting("personal-model-garden: this deploy runs").rstrip("\n")
    assert summary == deploy_summary(load_settings(readme_settings_file()))


def test_the_health_example_is_what_that_garden_answers():
    [block] = [b for b in fenced_blocks(language="json") if b.startswith("{\"status\"")]
    shown = json.loads(block)
    settings = load_settings({**readme_settings_file(), "GATEWAY_API_KEYS": f"me:{KEY}"})  # as the Secret sets it
    assert shown == health_report(settings, "modal", answered_here=ANSWERED_HERE)


def test_the_local_banner_is_what_local_mode_prints():
    first, second = block_starting("gateway listening on http://127.0.0.1:8000  (Ollama API under /ollama)").splitlines()
    assert first == banner_lines("127.0.0.1", 8000, "")[0]
    # find_ollama's words when it starts Ollama itself (proxy/local.py)
    assert re.fullmatch(r"ollama: started `\S+ serve` at http://127\.0\.0\.1:11434 \(\d+\.\ds\); it stops with the gateway", second)


async def replay(make_modal_garden, http, caplog) -> tuple[dict, list[dict]]:
    """The README's scenario on the deployed shape: the GPU container starts, `me` chats
    with llama3.2, lists the models (answered from the catalog), and a request without a
    key is refused. Returns the metrics scrape and the access-log lines."""
    deployed = load_settings(readme_settings_file())
    garden = await make_modal_garden(
        gateway_api_keys=(f"me:{KEY}",), ollama_gpu=deployed.ollama_gpu, ollama_model_list=deployed.ollama_model_list,
        ollama_pools=deployed.ollama_pools,
    )  # fmt: skip
    await garden.start_backend()
    caplog.set_level(logging.INFO, "proxy.access")
    auth = {"Authorization": f"Bearer {KEY}"}
    chat = {"model": "llama3.2", "messages": [{"role": "user", "content": "Why is the sky blue?"}]}
    async with http.post(garden.url + "/ollama/api/chat", json=chat, headers=auth) as response:
        assert response.status == 200
        await response.read()
    async with http.get(garden.url + "/ollama/api/tags", headers=auth) as response:
        assert response.status == 200
        await response.read()
    async with http.get(garden.url + "/ollama/api/tags") as response:
        assert response.status == 401
        await response.read()
    logged = [json.loads(record.getMessage()) for record in caplog.records if record.name == "proxy.access"]
    async with http.get(garden.url + "/metrics", headers=auth) as response:
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, logged


TIMINGS = {"ttfb_ms", "duration_ms", "backend_wait_ms"}  # vary from run to run: only null or not
TIMED_SAMPLES = ("_sum", "_bucket")  # histograms' times


async def test_the_metrics_example_is_what_the_readmes_scenario_scrapes(make_modal_garden, http, caplog):
    samples, _ = await replay(make_modal_garden, http, caplog)
    shown = readme_lines("garden_")
    assert len(shown) >= 8
    for line in shown:
        [family] = text_string_to_metric_families(line + "\n")
        [sample] = family.samples
        key = (sample.name, tuple(sorted(sample.labels.items())))
        assert key in samples, f"README shows a series the gateway does not have: {line}"
        if not sample.name.endswith(TIMED_SAMPLES):
            assert samples[key] == sample.value, line


async def test_the_access_log_examples_are_what_the_readmes_scenario_logs(make_modal_garden, http, caplog):
    _, logged = await replay(make_modal_garden, http, caplog)
    shown = [json.loads(line.removeprefix("INFO proxy.access: ")) for line in readme_lines("INFO proxy.access: ")]
    assert len(shown) == len(logged) == 3
    for readme, real in zip(shown, logged, strict=True):
        assert list(readme) == list(real)  # the same fields, in the same order
        for field, value in real.items():
            if field in TIMINGS:
                assert (readme[field] is None) == (value is None), field
            else:
                assert readme[field] == value, (field, readme, real)


def log_formats(module: str) -> list[re.Pattern]:
    """The messages `module` logs, as patterns: `"model %s pulled in %.1fs"` -> a regex."""
    source = (REPO / (module.replace(".", "/") + ".py")).read_text()
    patterns = []
    for literal in re.findall(r'log\.(?:info|warning|error)\(\s*"((?:[^"\\]|\\.)*)"', source):
        pattern = re.escape(literal).replace("%%", "%")
        pattern = re.sub(r"%(\\\.\d)?[sdf]", ".+", pattern)
        patterns.append(re.compile(pattern))
    return patterns


def test_the_backend_start_up_lines_are_messages_the_backend_logs():
    shown = [line for line in readme_lines("INFO backend.")]
    assert len(shown) >= 5
    for line in shown:
        module, message = re.fullmatch(r"INFO (backend\.\w+): (.*)", line).groups()
        assert any(pattern.fullmatch(message) for pattern in log_formats(module)), line


def test_use_it_uses_one_small_model_and_defines_the_base_url_first():
    section = use_it()
    models = set(re.findall(r'model(?:"\s*:\s*|=)"([^"]+)"', section))
    assert models == {"llama3.2"}
    shell = fenced_blocks(section, "sh")
    assert shell[0].startswith("GARDEN=http://localhost:8000/ollama\n")
    for python in fenced_blocks(section, "python"):
        assert 'GARDEN = os.environ.get("GARDEN", "http://localhost:8000/ollama")' in python


async def run(*command: str, env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(*command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode, out.decode()


async def test_the_use_it_snippets_run_as_pasted_against_a_local_gateway(gateway, standin):
    """Each snippet of "Use it", against a gateway on loopback in front of the stand-in: the
    shell ones after the first block (which sets GARDEN, here to this gateway's URL)."""
    _, state = standin
    base = gateway + "/ollama"
    shell = fenced_blocks(use_it(), "sh")
    setup = shell[0].replace("http://localhost:8000/ollama", base)
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    for block in shell[1:]:
        code, out = await run("bash", "-ec", setup + block, env=env)
        assert code == 0, out
        assert '"done": true' in out or "data: [DONE]" in out, out
    assert [r.path for r in state.seen].count("/api/pull") == len(shell) - 1  # the set-up block pulled each time
    for block in fenced_blocks(use_it(), "python"):
        code, out = await run(sys.executable, "-c", block, env={**env, "GARDEN": base, "PYTHONPATH": str(REPO)})
        assert code == 0, out
        assert out.strip(), block  # the streamed answer was printed
