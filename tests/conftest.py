"""Shared fixtures: a stand-in Ollama and the gateway in front of it, on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import ollama
import pytest
from prometheus_client.parser import text_string_to_metric_families
from aiohttp import web

from backend.cancel import LocalStopSignals
from backend.catalog import DictCatalog
from backend.relay import OllamaRelay
from backend.service import OllamaService
from config import Settings
from proxy import forward
from proxy.app import create_app
from proxy.server import start_site
from proxy.catalog import CatalogBackend, StoredResponse, containers_up
from proxy.garden import Garden, runners_of
from proxy.pools import PoolRoute, PoolRouter
from proxy.transport import Backend, InProcessBackend, RemoteBackend
from tests.fake_modal import FakeBackendMethod, FakeModalDict
from tests.fake_ollama import AlreadyRunning
from tests.ollama_standin import VERSION, StandinState, create_standin


class Served:
    """An aiohttp app listening on a free loopback port."""

    def __init__(self, runner: web.AppRunner, url: str) -> None:
        self.runner = runner
        self.url = url


async def serve(app: web.Application, **options) -> Served:
    """Any aiohttp app (the stand-in) on plain aiohttp."""
    runner = web.AppRunner(app, access_log=None, **options)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return Served(runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}")


async def serve_gateway(app: web.Application) -> Served:
    """The gateway app, served exactly as local mode and Modal serve it."""
    runner, site = await start_site(app, "127.0.0.1", 0)
    return Served(runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}")


@pytest.fixture
async def standin() -> AsyncIterator[tuple[str, StandinState]]:
    """(url, state) of a running Ollama stand-in."""
    state = StandinState()
    # Like Ollama, the stand-in cancels a request's work when its client goes away.
    served = await serve(create_standin(state), handler_cancellation=True)
    yield served.url, state
    await served.runner.cleanup()


@pytest.fixture
def settings() -> Settings:
    return Settings()


@pytest.fixture
async def start_gateway(settings: Settings) -> AsyncIterator[Callable]:
    """Start a gateway in front of any backend (Settings fields as overrides); all are
    stopped at teardown."""
    started: list[Served] = []

    async def start(
        backend: Backend,
        first_byte_timeout: float | None = None,
        loopback_only: bool = False,
        backend_kind: str = "local",
        catalog=None,
        garden: Garden | None = None,
        **overrides,
    ) -> str:
        app = create_app(
            backend,
            dataclasses.replace(settings, **overrides),
            backend_kind=backend_kind,
            first_byte_timeout=first_byte_timeout,
            loopback_only=loopback_only,
            catalog=catalog,
            garden=garden,
        )
        served = await serve_gateway(app)
        started.append(served)
        return served.url

    yield start
    for served in started:
        await served.runner.cleanup()


@pytest.fixture
async def gateway(standin, start_gateway) -> str:
    """URL of a gateway whose in-process backend relays to the stand-in."""
    url, _ = standin
    return await start_gateway(InProcessBackend(OllamaRelay(url)))


@dataclasses.dataclass
class ModalGarden:
    """The deployed shape, in process: a gateway on the Modal-like transport, the backend
    service behind `method` (its `remote_gen` and `get_current_stats`), the catalog Dict."""

    url: str
    state: StandinState
    service: OllamaService
    method: FakeBackendMethod
    catalog: FakeModalDict
    stops: LocalStopSignals
    garden: Garden | None = None

    async def start_backend(self) -> None:
        """The GPU container's start-up hook (pulls, catalog, preload)."""
        await asyncio.to_thread(self.service.start)


@pytest.fixture
async def make_modal_garden(standin, start_gateway) -> AsyncIterator[Callable[..., Awaitable[ModalGarden]]]:
    """Gardens shaped as on Modal, before their first backend start (no catalog yet);
    keyword arguments override Settings fields, as for `start_gateway`."""
    url, state = standin
    services: list[OllamaService] = []

    async def make(metered: dict | None = None, scaledown: float | None = None, **overrides) -> ModalGarden:
        """`metered`: a Garden's options (e.g. its `store` and intervals) to meter GPU time
        as app.py does; `scaledown`: the seam's scale-down window."""
        catalog = FakeModalDict()
        service = OllamaService(url, ("llama3.2",), commit=lambda: None, server=AlreadyRunning(), catalog=DictCatalog(catalog, VERSION))
        services.append(service)
        stops = LocalStopSignals()
        method = FakeBackendMethod(lambda request: service.proxy(request, stops=stops), on_ready=service.mark_ready, scaledown=scaledown)
        garden = None if metered is None else Garden({"default": "A100-40GB"}, runners={"default": runners_of(method)}, **metered)
        to_gpu = RemoteBackend(method.remote_gen.aio, stops) if garden is None else garden.metered("default", RemoteBackend(method.remote_gen.aio, stops))
        remote = CatalogBackend(to_gpu, DictCatalog(catalog, VERSION))  # as app.py wires a pool
        pools = PoolRouter([PoolRoute("default", remote, ("llama3.2",), containers_up(method))])
        gateway = await start_gateway(pools, backend_kind="modal", garden=garden, **overrides)
        return ModalGarden(gateway, state, service, method, catalog, stops, garden)

    yield make
    for service in services:
        await service.settle()
        await service.relay.aclose()


@pytest.fixture
async def modal_garden(make_modal_garden) -> ModalGarden:
    return await make_modal_garden()


class StoredBackend:
    """A `Backend` that answers every request with one stored body, and counts them."""

    def __init__(self, body: bytes = b"", content_type: str = "application/json") -> None:
        self.body, self.content_type = body, content_type
        self.calls = 0

    async def open(self, request: dict) -> StoredResponse:
        self.calls += 1
        return StoredResponse(200, self.content_type, self.body)

    async def aclose(self) -> None:
        return None


@pytest.fixture
async def ollama_clients() -> AsyncIterator[Callable[..., ollama.AsyncClient]]:
    """Official `ollama` clients, closed at teardown (an unclosed one closes itself when
    collected, after its loop is gone, and logs a traceback into whatever test runs then)."""
    made: list[ollama.AsyncClient] = []

    def make(host: str, **kwargs) -> ollama.AsyncClient:
        made.append(ollama.AsyncClient(host=host, **kwargs))
        return made[-1]

    yield make
    for client in made:
        await client.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def raw_exchange(url: str, request: bytes) -> bytes:
    """Send raw bytes to `url` and return everything it answers until it closes the
    connection (for requests no HTTP client would send, or to see the connection end)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request: its head, and its body if it has a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + (await reader.readexactly(length) if length else b"")


@pytest.fixture
async def raw_upstream() -> AsyncIterator[Callable[[Handler], Awaitable[tuple[str, list[bytes]]]]]:
    """Start a TCP server running `handler(reader, writer, connection_number)`; returns
    its base URL and the list of requests it records (handlers append to it)."""
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> tuple[str, list[bytes]]:
        count = 0

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal count
            count += 1
            try:
                await handler(reader, writer, count)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", []

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
def fast_keepalive(monkeypatch) -> None:
    """Keep-alive bytes every 0.3 s instead of 5 s, so slow starts are tested in seconds."""
    monkeypatch.setattr(forward, "KEEPALIVE_INTERVAL", 0.3)


async def scraped_tokens(gateway: str, headers: dict[str, str]) -> dict[tuple[str, str, str], float]:
    """garden_tokens_total from the gateway's /metrics, by (key, model, kind)."""
    async with aiohttp.ClientSession() as http, http.get(gateway + "/metrics", headers=headers) as response:
        text = await response.text()
    return {
        (s.labels["key"], s.labels["model"], s.labels["kind"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "garden_tokens_total"
    }
