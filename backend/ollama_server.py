"""Running `ollama serve` and preparing its models.

Synchronous on purpose: these run in Modal's `@modal.enter()` hook and at local-mode
start-up, before any request is served. Plain stdlib HTTP, so they depend on nothing
but a reachable Ollama.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from urllib.parse import urlsplit

log = logging.getLogger(__name__)


class OllamaStartError(RuntimeError):
    """`ollama serve` did not come up."""


class PullError(RuntimeError):
    """A model could not be pulled."""


def _get(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (our own URL)
        return response.read()


def _post_lines(url: str, payload: dict, timeout: float | None) -> Iterator[dict]:
    """POST JSON and yield each NDJSON line of the answer as it arrives."""
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        try:
            message = json.loads(body).get("error", body)
        except (ValueError, AttributeError):
            message = body
        raise PullError(f"HTTP {exc.code}: {message}") from None
    with response:
        for line in response:
            if line.strip():
                yield json.loads(line)


def is_up(base_url: str, timeout: float = 1.0) -> bool:
    """True if an Ollama answers at `base_url`."""
    try:
        return _get(base_url + "/", timeout).startswith(b"Ollama is running")
    except (OSError, ValueError):
        return False


def version(base_url: str, timeout: float = 2.0) -> str | None:
    """The version an Ollama reports, or None if it does not say."""
    try:
        reported = json.loads(_get(base_url + "/api/version", timeout)).get("version")
    except (OSError, ValueError, AttributeError):
        return None
    return reported if isinstance(reported, str) else None


def canonical_model(name: str) -> str:
    """Ollama's own rule: a model with no tag means `:latest`."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def local_models(base_url: str) -> set[str]:
    body = json.loads(_get(base_url + "/api/tags", timeout=10))
    return {canonical_model(m["name"]) for m in body.get("models", [])}


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def pull(base_url: str, model: str, log_every: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
    """Pull `model`, logging progress at most every `log_every` seconds per layer."""
    last_logged: dict[str, float] = {}
    for event in _post_lines(base_url + "/api/pull", {"model": model, "stream": True}, timeout=None):
        if "error" in event:
            raise PullError(event["error"])
        status = event.get("status", "")
        total, completed = event.get("total"), event.get("completed")
        if total and completed is not None:
            now = clock()
            if completed < total and now - last_logged.get(status, -1e9) < log_every:
                continue
            last_logged[status] = now
            log.info("pull %s: %s %.0f%% of %s", model, status, 100 * completed / total, human_size(total))
        else:
            log.info("pull %s: %s", model, status)


def pull_missing(base_url: str, models: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Pull each model not present yet. Returns (pulled, failed); a failure is logged, not raised,
    so the container still serves the models it has."""
    present = local_models(base_url)
    pulled, failed = [], []
    for model in models:
        if canonical_model(model) in present:
            log.info("model %s already on the volume", model)
            continue
        started = time.monotonic()
        try:
            pull(base_url, model)
        except (PullError, OSError, ValueError) as exc:
            log.error("model %s failed to pull: %s", model, exc)
            failed.append(model)
            continue
        log.info("model %s pulled in %.1fs", model, time.monotonic() - started)
        pulled.append(model)
    return pulled, failed


def preload(base_url: str, model: str) -> float:
    """Load `model` into memory (an empty generate does only that) and keep it loaded."""
    started = time.monotonic()
    for event in _post_lines(base_url + "/api/generate", {"model": model, "keep_alive": -1}, timeout=None):
        if "error" in event:
            raise PullError(f"preload of {model} failed: {event['error']}")
    return time.monotonic() - started


class OllamaServer:
    """An `ollama serve` child process bound to `base_url`'s host and port."""

    def __init__(self, base_url: str, binary: str = "ollama", env: Mapping[str, str] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.binary = binary
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        parts = urlsplit(self.base_url)
        env = {**os.environ, **self.extra_env, "OLLAMA_HOST": f"{parts.hostname}:{parts.port}"}
        log.info("starting %s serve on %s", self.binary, self.base_url)
        self.process = subprocess.Popen([self.binary, "serve"], env=env, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float, interval: float = 0.1) -> float:
        """Poll until Ollama answers; return the seconds it took."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise OllamaStartError(f"`{self.binary} serve` exited with code {self.process.returncode} before answering")
            if is_up(self.base_url, timeout=min(1.0, max(deadline - time.monotonic(), 0.05))):
                return time.monotonic() - started
            time.sleep(interval)
        raise OllamaStartError(f"Ollama did not answer at {self.base_url} within {timeout:.0f}s")

    def stop(self, grace: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        log.info("ollama stopped (exit code %s)", self.process.returncode)
