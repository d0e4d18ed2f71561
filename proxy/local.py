"""Local mode: find (or start) an Ollama on this machine for the in-process backend."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from backend.ollama_server import OllamaServer, OllamaStartError, is_up, version
from backend.relay import OllamaRelay
from proxy.auth import is_loopback_name
from proxy.transport import Backend, InProcessBackend, UnavailableBackend

log = logging.getLogger(__name__)

# Addresses that mean "every interface": not where a browser can go.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def open_url(host: str, port: int) -> str:
    """A URL for the gateway one can open: `0.0.0.0` -> `127.0.0.1`, IPv6 in brackets."""
    host = _WILDCARDS.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def banner_lines(host: str, port: int, ollama: str) -> list[str]:
    """What local mode prints once it listens."""
    where = f"gateway listening on {open_url(host, port)}  (Ollama API under /ollama)"
    if host in _WILDCARDS:
        where += f"; on every address of this machine (--host {host})"
    return [where, f"ollama: {ollama}"]


@dataclass
class LocalOllama:
    backend: Backend
    description: str  # for the start-up banner
    server: OllamaServer | None = None  # set when we started `ollama serve` ourselves
    url: str = ""
    version: str | None = None  # what it reported at start-up

    @property
    def report(self) -> dict:
        """What local mode really uses, for /health (not Modal's GPU and models)."""
        return {"ollama_url": self.url, "ollama_version": self.version, "ollama_started_by_gateway": self.server is not None}

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def find_ollama(
    base_url: str, ready_timeout: float = 60.0, which: Callable[[str], str | None] = shutil.which
) -> LocalOllama:
    """Use the Ollama at `base_url`; else start `ollama serve` there; else explain."""
    if is_up(base_url):
        return LocalOllama(InProcessBackend(OllamaRelay(base_url)), f"using the Ollama already running at {base_url}", url=base_url, version=version(base_url))
    binary = which("ollama")
    host = urlsplit(base_url).hostname or ""
    if binary and is_loopback_name(host):
        server = OllamaServer(base_url, binary=binary)
        server.start()
        try:
            waited = server.wait_ready(ready_timeout)
        except OllamaStartError as exc:
            server.stop()
            return LocalOllama(UnavailableBackend(f"{exc}. Run `ollama serve` yourself to see why."), f"could not start {binary}: {exc}", url=base_url)
        return LocalOllama(
            InProcessBackend(OllamaRelay(base_url)),
            f"started `{binary} serve` at {base_url} ({waited:.1f}s); it stops with the gateway",
            server,
            url=base_url,
            version=version(base_url),
        )
    message = (
        f"No Ollama answers at {base_url}"
        + ("" if binary else " and `ollama` is not on PATH")
        + ". Install Ollama from https://ollama.com/download and run `ollama serve`,"
        " or set OLLAMA_HOST to the host:port of a running Ollama."
    )
    return LocalOllama(UnavailableBackend(message), message, url=base_url)
