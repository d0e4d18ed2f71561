"""Local mode, as a user runs it: `python -m proxy` in a subprocess."""

from __future__ import annotations

import http.client
import json
import signal
import socket
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
    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "--port", str(self.port), *args],
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

    def start(env, *args):
        gateway = LocalGateway(env, *args)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        if gateway.process.poll() is None:
            gateway.process.kill()
            gateway.process.wait()


def start_standin(*args: str) -> tuple[int, subprocess.Popen]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tests.ollama_standin", "--port", str(port), *args], cwd=REPO, env=env_with_path(None))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while not is_up(url) and time.monotonic() < deadline:
        time.sleep(0.05)
    return port, process


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


def run_proxy(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], cwd=REPO, env=env_with_path(None, **env), capture_output=True, text=True, timeout=30
    )


def test_a_busy_port_is_one_line_naming_port_and_exit_2():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_proxy("--port", str(port), OLLAMA_HOST=f"127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == f"error: port {port} is already in use on 127.0.0.1: stop what uses it, or pick another with --port"
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("host", "reason"), [("no-such-host.invalid", "--host no-such-host.invalid"), ("10.255.255.1", "--host 10.255.255.1")])
def test_a_bad_host_is_one_line_naming_host_and_exit_2(host, reason):
    result = run_proxy("--host", host, "--port", str(free_port()), OLLAMA_HOST=f"127.0.0.1:{free_port()}", GATEWAY_API_KEYS="me:k")
    assert result.returncode == 2
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"error: cannot listen on {reason}: ") and "use an address of this machine" in last
    assert "Traceback" not in result.stderr


def test_a_bad_port_names_port():
    result = run_proxy("--port", "70000")
    assert result.returncode == 2 and "argument --port: '70000' is not a port number from 1 to 65535" in result.stderr


def test_serving_the_network_without_keys_is_refused_unless_asked_for(local_gateways):
    result = run_proxy("--host", "0.0.0.0", "--port", str(free_port()), OLLAMA_HOST=f"127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: refusing to serve --host 0.0.0.0 without a key (anyone on the network could use your Ollama): "
        "set GATEWAY_API_KEYS, or keep the default --host 127.0.0.1; GATEWAY_ALLOW_OPEN=1 serves it open on purpose"
    ]
    # With a key, or the owner's explicit yes, it serves; its banner names a URL one can open.
    for env in ({"GATEWAY_API_KEYS": "me:sk-1"}, {"GATEWAY_ALLOW_OPEN": "1"}):
        gateway = local_gateways(env_with_path(None, OLLAMA_HOST=f"127.0.0.1:{free_port()}", **env), "--host", "0.0.0.0")
        assert gateway.listening == (
            f"gateway listening on http://127.0.0.1:{gateway.port}  (Ollama API under /ollama); on every address of this machine (--host 0.0.0.0)"
        )
        assert gateway.get("/health")[0] == 200
        assert gateway.interrupt()[0] == 0


def test_help_lists_the_environment_variables_it_reads():
    result = run_proxy("--help")
    assert result.returncode == 0
    for name in ("OLLAMA_HOST", "GATEWAY_PORT", "GATEWAY_API_KEYS", "GATEWAY_KEY_POLICY", "GATEWAY_ALLOW_OPEN", "GATEWAY_CORS_ORIGINS", "GATEWAY_USAGE_FILE", "GARDEN_SETTINGS_FILE"):
        assert f"\n  {name} " in result.stdout
    assert "garden.env" in result.stdout


def test_the_first_ctrl_c_says_how_many_streams_drain_and_the_second_stops_now(local_gateways):
    port, standin = start_standin("--token-delay", "0.5", "--tokens", "200")  # a 100 s stream
    try:
        gateway = local_gateways(env_with_path(None, OLLAMA_HOST=f"127.0.0.1:{port}"))
        streams = []
        for _ in range(2):
            conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
            conn.request("POST", "/ollama/api/chat", body=json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}))
            response = conn.getresponse()
            assert response.status == 200 and response.readline()  # the stream is flowing
            streams.append(conn)
        gateway.process.send_signal(signal.SIGINT)
        line = gateway.process.stdout.readline().strip()
        assert line == "stopping: waiting for 2 open streams to end (press Ctrl-C again to stop now)"
        assert gateway.process.poll() is None  # still draining
        started = time.monotonic()
        gateway.process.send_signal(signal.SIGINT)
        out, _ = gateway.process.communicate(timeout=10)
        assert time.monotonic() - started < 5 and gateway.process.returncode == 0
        assert "Traceback" not in out
    finally:
        standin.terminate()
        standin.wait()


def test_settings_come_from_the_settings_file_and_the_environment_wins(local_gateways, tmp_path):
    settings = tmp_path / "garden.env"
    settings.write_text("# my garden\nGATEWAY_READ_ONLY=true\nGATEWAY_MAX_BODY_MB=7\nOLLAMA_TIMEOUT=90\n")
    env = env_with_path(None, OLLAMA_HOST=f"127.0.0.1:{free_port()}", GARDEN_SETTINGS_FILE=str(settings), OLLAMA_TIMEOUT="120")
    gateway = local_gateways(env)
    config = gateway.get("/health")[1]["config"]
    assert config["read_only"] is True and config["max_body_mb"] == 7  # from the file
    assert config["timeout_s"] == 120  # the environment over the file
    assert gateway.interrupt()[0] == 0
