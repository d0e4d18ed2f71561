"""Local mode, as a user runs it: `python -m proxy` in a subprocess."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from backend.ollama_server import is_up
from tests.fake_ollama import REPO, env_with_path, write_fake_ollama
from tests.test_ollama_server import free_port


class LocalGateway:
    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "--port", str(self.port)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines = self._read_banner()
        self.listening = next(line for line in lines if line.startswith("gateway listening"))
        self.ollama_line = lines[-1]

    def _read_banner(self) -> list[str]:
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if line.startswith("ollama: "):
                return lines
        self.process.kill()
        raise AssertionError("local gateway did not start:\n" + "\n".join(lines))

    def get(self, path: str) -> tuple[int, dict | str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode()

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C, as a user would; returns (exit code, the rest of the output)."""
        self.process.send_signal(signal.SIGINT)
        out, _ = self.process.communicate(timeout=20)
        return self.process.returncode, out


@pytest.fixture
def local_gateways():
    started: list[LocalGateway] = []

    def start(env):
        gateway = LocalGateway(env)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        if gateway.process.poll() is None:
            gateway.process.kill()
            gateway.process.wait()


@pytest.fixture
def standin_process(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.ollama_standin", "--port", str(port)], cwd=REPO, env=env_with_path(None)
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while not is_up(url) and time.monotonic() < deadline:
        time.sleep(0.05)
    yield port
    process.terminate()
    process.wait()


def test_uses_a_running_ollama(local_gateways, standin_process):
    gateway = local_gateways(env_with_path(None, OLLAMA_HOST=f"127.0.0.1:{standin_process}"))
    assert gateway.listening == f"gateway listening on {gateway.url}  (Ollama API under /ollama)"
    assert "using the Ollama already running" in gateway.ollama_line
    status, health = gateway.get("/health")
    # What local mode really uses, not Modal's GPU and model list.
    assert status == 200 and health["backend"] == "local"
    assert health["config"]["ollama_url"] == f"http://127.0.0.1:{standin_process}"
    assert health["config"]["ollama_version"] == "0.30.3-standin" and health["config"]["ollama_started_by_gateway"] is False
    assert "gpu" not in health["config"] and "models" not in health["config"]
    status, tags = gateway.get("/ollama/api/tags")
    assert status == 200 and "llama3.2:latest" in [m["name"] for m in tags["models"]]
    assert gateway.get("/ollama")[1] == "Ollama is running"
    code, _ = gateway.interrupt()
    assert code == 0
    assert is_up(f"http://127.0.0.1:{standin_process}")  # not ours: left running


def test_starts_ollama_itself_and_stops_it_on_exit(local_gateways, tmp_path):
    write_fake_ollama(tmp_path / "bin")
    ollama_port = free_port()
    gateway = local_gateways(env_with_path(tmp_path / "bin", OLLAMA_HOST=f"http://127.0.0.1:{ollama_port}"))
    assert "started `" in gateway.ollama_line and "serve`" in gateway.ollama_line
    status, version = gateway.get("/ollama/api/version")
    assert status == 200 and version["version"].endswith("standin")
    assert gateway.get("/health")[1]["config"]["ollama_started_by_gateway"] is True
    code, out = gateway.interrupt()
    assert code == 0, out
    assert "Traceback" not in out
    assert not is_up(f"http://127.0.0.1:{ollama_port}")


def test_without_ollama_it_still_serves_and_says_what_to_do(local_gateways):
    gateway = local_gateways(env_with_path(None, OLLAMA_HOST=f"127.0.0.1:{free_port()}"))
    status, health = gateway.get("/health")
    assert status == 200 and health["config"]["ollama_version"] is None
    status, body = gateway.get("/ollama/api/tags")
    assert status == 503
    assert "not on PATH" in body["error"] and "Install Ollama" in body["error"] and "OLLAMA_HOST" in body["error"]
    status, body = gateway.get("/ollama/v1/models")
    assert status == 503 and "Install Ollama" in body["error"]["message"]
    code, out = gateway.interrupt()
    assert code == 0 and "Traceback" not in out


def test_a_bad_setting_stops_it_with_a_clear_message():
    result = subprocess.run(
        [sys.executable, "-m", "proxy"], cwd=REPO, env=env_with_path(None, OLLAMA_TIMEOUT="soon"), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "OLLAMA_TIMEOUT='soon'" in result.stderr and "whole number" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_stops_it_cleanly_too(local_gateways, tmp_path):
    write_fake_ollama(tmp_path / "bin")
    ollama_port = free_port()
    gateway = local_gateways(env_with_path(tmp_path / "bin", OLLAMA_HOST=f"http://127.0.0.1:{ollama_port}"))
    gateway.process.terminate()
    out, _ = gateway.process.communicate(timeout=20)
    assert gateway.process.returncode == 0 and "Traceback" not in out
    assert not is_up(f"http://127.0.0.1:{ollama_port}")  # the Ollama it started is stopped
