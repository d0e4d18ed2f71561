"""A real browser on another origin streams through the gateway, token by token.

Headless Chromium loads tests/browser/stream.html from a page server on its own loopback
port, so every call to the gateway (another port, hence another origin) is a CORS
request; with an API key in `Authorization` each one is preflighted. The page streams
`/ollama/api/chat` (NDJSON) and `/ollama/v1/chat/completions` (SSE) with fetch and a
ReadableStream reader, and appends a <span> per token as it arrives.

Chromium is driven over the DevTools protocol with aiohttp's websocket client (already a
dependency; no selenium, no chromedriver), without blocking the event loop that runs the
gateway and the stand-in. The page reports each rendered token through a DevTools
binding; the test then reads the page's DOM and only afterwards lets the stand-in send
the next token (its `gate`). So the tokens must reach the page one at a time: a gateway
(or browser) that buffered would deadlock and fail on a timeout, whatever the speed of
the machine.

Needs /usr/bin/chromium (Debian: `apt-get install chromium`). Without it the tests are
skipped, except in CI (`CI` set), where they fail.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import tempfile
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web

from backend.relay import OllamaRelay
from proxy.transport import InProcessBackend
from tests.ollama_standin import StandinState, tokens

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
    "--remote-debugging-port=0",  # Chromium picks a free port and writes it to DevToolsActivePort
)
PAGE_DIR = Path(__file__).parent / "browser"
KEY = "sk-garden-browser-test"
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "Why is the sky blue?"}]}
GAP = 0.05  # the test waits this long after each rendered token before letting the next one go
STEP_TIMEOUT = 15.0  # generous for a slow 2-core CI machine; a buffering gateway never gets there


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


class DevTools:
    """A DevTools protocol session with one page, over aiohttp's websocket client."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0
        self.pending: dict[int, asyncio.Future] = {}
        self.events: defaultdict[str, asyncio.Queue] = defaultdict(asyncio.Queue)
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                if "id" in data:
                    future = self.pending.pop(data["id"], None)
                    if future is None or future.done():
                        continue
                    if "error" in data:
                        future.set_exception(RuntimeError(f"DevTools error: {data['error']}"))
                    else:
                        future.set_result(data.get("result", {}))
                else:
                    self.events[data["method"]].put_nowait(data.get("params", {}))
        finally:
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("the DevTools connection closed"))

    async def send(self, method: str, **params) -> dict:
        self.next_id += 1
        future = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        return await asyncio.wait_for(future, STEP_TIMEOUT * 2)

    async def evaluate(self, expression: str):
        """The value of a JS expression (awaited if it is a promise)."""
        result = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise AssertionError(f"page raised: {details.get('exception', {}).get('description') or details['text']}")
        return result["result"].get("value")

    async def event(self, method: str, timeout: float = STEP_TIMEOUT) -> dict:
        return await asyncio.wait_for(self.events[method].get(), timeout)

    def drain(self, method: str) -> list[dict]:
        queue, items = self.events[method], []
        while not queue.empty():
            items.append(queue.get_nowait())
        return items

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


async def _devtools_port(profile: Path, process: asyncio.subprocess.Process, log: Path) -> int:
    active_port = profile / "DevToolsActivePort"
    for _ in range(int(STEP_TIMEOUT / 0.05)):
        if process.returncode is not None:
            break
        if active_port.exists():
            first_line = active_port.read_text().split("\n", 1)[0].strip()
            if first_line.isdigit():
                return int(first_line)
        await asyncio.sleep(0.05)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise AssertionError(f"Chromium did not start (exit code {process.returncode}):\n{tail}")


@pytest.fixture
async def browser() -> AsyncIterator[DevTools]:
    """A fresh headless Chromium; a DevTools session with its (blank) page."""
    if not os.path.exists(CHROMIUM):
        reason = f"{CHROMIUM} not found: install Debian's chromium package to run the browser tests"
        if in_ci():
            pytest.fail(reason + " (CI is set, so this is a failure, not a skip)", pytrace=False)
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="garden-chromium-"))
    profile, log = root / "profile", root / "chromium.log"
    env = {**os.environ, "HOME": str(root), "XDG_CONFIG_HOME": str(root / "config"), "XDG_CACHE_HOME": str(root / "cache")}
    with open(log, "wb") as log_file:
        # Its own session, so that teardown can end Chromium's helper processes too.
        process = await asyncio.create_subprocess_exec(
            CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank",
            stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file, env=env, start_new_session=True,
        )  # fmt: skip
    http = aiohttp.ClientSession()
    devtools = None
    try:
        port = await _devtools_port(profile, process, log)
        for _ in range(int(STEP_TIMEOUT / 0.05)):
            async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
                pages = [t for t in await response.json() if t["type"] == "page"]
            if pages:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("Chromium opened no page")
        ws = await http.ws_connect(f"ws://127.0.0.1:{port}/devtools/page/{pages[0]['id']}", max_msg_size=0)
        devtools = DevTools(ws)
        yield devtools
    finally:
        if devtools is not None:
            await devtools.close()
        await http.close()
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # helpers (renderer, zygote) left behind, if any
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def page_origin() -> AsyncIterator[str]:
    """A static server for tests/browser, on a loopback port of its own: the page's origin."""
    app = web.Application()

    async def no_store(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Cache-Control"] = "no-store"

    app.on_response_prepare.append(no_store)
    app.router.add_static("/", PAGE_DIR)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    await runner.cleanup()


@pytest.fixture
async def keyed_gateway(standin, start_gateway) -> str:
    """A gateway with an API key (so every browser call is preflighted) and default CORS (*)."""
    url, _ = standin
    return await start_gateway(InProcessBackend(OllamaRelay(url)), gateway_api_keys=(KEY,))


async def open_page(browser: DevTools, page_origin: str, gateway: str) -> None:
    await browser.send("Runtime.enable")  # bindings report through Runtime events
    await browser.send("Runtime.addBinding", name="gardenRendered")
    await browser.send("Network.enable")  # to see the preflights
    await browser.send("Page.enable")
    await browser.send("Page.navigate", url=f"{page_origin}/stream.html?{urlencode({'gateway': gateway})}")
    await browser.event("Page.loadEventFired")
    assert await browser.evaluate("typeof window.streamChat") == "function"
    assert await browser.evaluate("location.origin") == page_origin != gateway


def start_chat(browser: DevTools, kind: str, key: str | None, body: dict, out_id: str) -> asyncio.Task:
    """Start the page's streamChat; the task ends with the page's result."""
    expression = f"streamChat({json.dumps(kind)}, {json.dumps(key)}, {json.dumps(body)}, {json.dumps(out_id)})"
    return asyncio.create_task(browser.evaluate(expression))


async def chat(browser: DevTools, kind: str, key: str | None, out_id: str) -> dict:
    """Run the page's streamChat to its end; its result."""
    return await asyncio.wait_for(start_chat(browser, kind, key, CHAT, out_id), STEP_TIMEOUT)


async def next_rendered(browser: DevTools, call: asyncio.Task) -> dict:
    """The page's next rendered-token report, or the page's result if it ended first."""
    event = asyncio.ensure_future(browser.event("Runtime.bindingCalled"))
    await asyncio.wait({event, call}, timeout=STEP_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    if event.done():
        return json.loads(event.result()["payload"])
    event.cancel()
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        await event
    if call.done():
        raise AssertionError(f"the page's stream ended before the next token: {call.result()}")
    raise AssertionError(f"no token rendered within {STEP_TIMEOUT}s: the stream is buffered somewhere")


async def stream_token_by_token(browser: DevTools, state: StandinState, kind: str, out_id: str) -> dict:
    """Stream in the page while the stand-in sends each token only once the page shows
    the previous one; check the DOM at every step. Returns the page's result."""
    expected = tokens(state.token_count)
    state.gate = asyncio.Queue()  # each line after the first waits for a permit
    call = start_chat(browser, kind, KEY, CHAT, out_id)
    try:
        for i, token in enumerate(expected):
            report = await next_rendered(browser, call)
            assert report == {"out": out_id, "index": i, "text": token}
            # Read what the page shows now: exactly the tokens so far, in order. The
            # stand-in has not even produced the next one yet.
            shown = await browser.evaluate(f"rendered({json.dumps(out_id)})")
            assert [s["text"] for s in shown] == expected[: i + 1]
            await asyncio.sleep(GAP)
            state.gate.put_nowait(True)
        for _ in range(3):  # after the last token: NDJSON's final line; SSE's finish event and [DONE]
            state.gate.put_nowait(True)
        return await asyncio.wait_for(call, STEP_TIMEOUT)
    finally:
        state.gate = None
        if not call.done():
            call.cancel()
        with contextlib.suppress(BaseException):
            await call


def assert_rendered_incrementally(shown: list[dict], expected: list[str]) -> None:
    assert [s["text"] for s in shown] == expected  # none lost, none doubled, in order
    gaps = [b["t"] - a["t"] for a, b in zip(shown, shown[1:])]
    # Each token was rendered at least GAP after the one before (the stand-in only sent
    # it then): they arrived one by one, not in one piece at the end.
    assert min(gaps) >= GAP * 1000 * 0.9, gaps


def preflights(browser: DevTools, url: str) -> list[dict]:
    sent = browser.drain("Network.requestWillBeSent")
    return [e for e in sent if e["request"]["url"] == url and e["request"]["method"] == "OPTIONS"]


async def test_page_on_another_origin_streams_native_chat_token_by_token(standin, keyed_gateway, page_origin, browser):
    _, state = standin
    await open_page(browser, page_origin, keyed_gateway)
    result = await stream_token_by_token(browser, state, "ndjson", "ndjson-reply")
    assert result["status"] == 200 and result["contentType"] == "application/x-ndjson"
    assert result["streamErrors"] == []
    assert result["final"]["done"] is True and result["final"]["eval_count"] == state.token_count
    assert result["reads"] >= state.token_count  # the body came in many reads, not one
    shown = await browser.evaluate("rendered('ndjson-reply')")
    assert_rendered_incrementally(shown, tokens(state.token_count))
    # The browser preflighted (Authorization is not a simple header), the gateway
    # answered it, and it never reached Ollama.
    assert preflights(browser, keyed_gateway + "/ollama/api/chat")
    assert [(s.method, s.path) for s in state.seen] == [("POST", "/api/chat")]
    assert "Authorization" not in state.seen[0].headers and "Origin" not in state.seen[0].headers


async def test_page_on_another_origin_streams_openai_sse_token_by_token(standin, keyed_gateway, page_origin, browser):
    _, state = standin
    state.token_count = 12
    await open_page(browser, page_origin, keyed_gateway)
    result = await stream_token_by_token(browser, state, "sse", "sse-reply")
    assert result["status"] == 200 and result["contentType"] == "text/event-stream"
    assert result["streamErrors"] == []
    assert result["finishReason"] == "stop" and result["sawDone"] is True
    shown = await browser.evaluate("rendered('sse-reply')")
    assert_rendered_incrementally(shown, tokens(12))
    assert preflights(browser, keyed_gateway + "/ollama/v1/chat/completions")
    assert [(s.method, s.path) for s in state.seen] == [("POST", "/v1/chat/completions")]


class SplitChunks:
    """A backend whose body chunks arrive in two pieces, cut mid-line, a moment apart:
    what the network may do to any stream. The page must put the lines back together."""

    def __init__(self, inner: InProcessBackend) -> None:
        self.inner = inner

    async def open(self, request):
        return SplitResponse(await self.inner.open(request))

    async def aclose(self) -> None:
        await self.inner.aclose()


class SplitResponse:
    served_by = "backend"
    cold_start = False
    pool = ""
    reruns = 0

    def __init__(self, inner) -> None:
        self.inner = inner
        self.status, self.headers = inner.status, inner.headers

    async def send_body(self, sink) -> None:
        async for chunk in self.inner.chunks():
            if len(chunk) > 2:
                cut = len(chunk) // 2
                sink.write(chunk[:cut])
                await asyncio.sleep(0.05)
                chunk = chunk[cut:]
            sink.write(chunk)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("kind", ["ndjson", "sse"])
async def test_page_puts_lines_split_across_reads_back_together(standin, start_gateway, page_origin, browser, kind):
    url, state = standin
    gateway = await start_gateway(SplitChunks(InProcessBackend(OllamaRelay(url))), gateway_api_keys=(KEY,))
    await open_page(browser, page_origin, gateway)
    result = await chat(browser, kind, KEY, "reply")
    assert result.get("status") == 200 and result["streamErrors"] == [], result
    assert result["splitReads"] > 0, result  # some reads did end mid-line
    assert [s["text"] for s in await browser.evaluate("rendered('reply')")] == tokens(state.token_count)
    assert result["final"]["done"] if kind == "ndjson" else result["sawDone"]


async def test_page_sees_a_wrong_key_as_401_with_a_readable_error(standin, keyed_gateway, page_origin, browser):
    _, state = standin
    await open_page(browser, page_origin, keyed_gateway)
    for key in ("wrong-key", None):
        native = await chat(browser, "ndjson", key, f"native-{key}")
        assert native.get("status") == 401, native
        assert "API key" in native["errorBody"]["error"]
        assert native["wwwAuthenticate"] == "Bearer"  # exposed to the page through CORS
        openai = await chat(browser, "sse", key, f"openai-{key}")
        assert openai.get("status") == 401, openai
        assert openai["errorBody"]["error"]["type"] == "authentication_error"
        assert "API key" in openai["errorBody"]["error"]["message"]
    assert await browser.evaluate("document.querySelectorAll('#replies span').length") == 0
    assert state.seen == []  # nothing reached Ollama


async def test_only_listed_origins_may_call_from_a_browser(standin, start_gateway, page_origin, browser):
    url, state = standin
    listed = await start_gateway(InProcessBackend(OllamaRelay(url)), gateway_api_keys=(KEY,), gateway_cors_origins=(page_origin,))
    await open_page(browser, page_origin, listed)
    result = await chat(browser, "ndjson", KEY, "listed")
    assert result.get("status") == 200, result
    assert [s["text"] for s in await browser.evaluate("rendered('listed')")] == tokens(state.token_count)

    elsewhere = await start_gateway(
        InProcessBackend(OllamaRelay(url)), gateway_api_keys=(KEY,), gateway_cors_origins=("https://chat.example",)
    )
    state.seen.clear()
    await open_page(browser, page_origin, elsewhere)
    result = await chat(browser, "ndjson", KEY, "refused")
    assert "fetchError" in result and "status" not in result, result  # the browser refused it
    assert state.seen == []  # the preflight failed, so the request itself was never sent


@pytest.mark.parametrize("kind", ["ndjson", "sse"])
async def test_page_gets_a_normal_stream_or_ollamas_error_after_a_cold_start(make_modal_garden, page_origin, browser, monkeypatch, kind):
    # A fetch + ReadableStream reader (the page's) sees the gateway's early head, then the
    # keep-alive bytes (spaces before the first NDJSON line, SSE comments), then the stream.
    from proxy import forward

    monkeypatch.setattr(forward, "KEEPALIVE_INTERVAL", 0.3)
    garden = await make_modal_garden(gateway_api_keys=(KEY,), gateway_early_head_s=0.2)
    garden.method.start_delay = 1.5
    await open_page(browser, page_origin, garden.url)
    result = await chat(browser, kind, KEY, f"{kind}-cold")
    assert result["status"] == 200 and result["streamErrors"] == []
    if kind == "ndjson":
        assert result["final"]["done"] is True
    else:
        assert result["finishReason"] == "stop" and result["sawDone"] is True
    assert [s["text"] for s in await browser.evaluate(f"rendered('{kind}-cold')")] == tokens(8)
    garden.method.scale_to_zero()
    ghost = {**CHAT, "model": "ghost"}
    result = await asyncio.wait_for(start_chat(browser, kind, KEY, ghost, f"{kind}-ghost"), STEP_TIMEOUT)
    message = "model 'ghost' not found"
    assert result["status"] == 200 and result["streamErrors"] == ([message] if kind == "ndjson" else [{"message": message, "type": "not_found_error", "param": None, "code": None}])


SCREENSHOT = Path(__file__).parent.parent / "docs" / "garden-page.png"


async def pool_state(browser: DevTools) -> str | None:
    """The default pool's state, as the page shows it, after one refresh."""
    await browser.evaluate("garden.refresh()")
    return await browser.evaluate("(document.querySelector('#pools tr[data-pool=\"default\"] td.state') || {}).textContent || null")


async def until_state(browser: DevTools, state: str) -> None:
    for _ in range(int(STEP_TIMEOUT / 0.05)):
        if await pool_state(browser) == state:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the page never showed the pool {state} (last: {await pool_state(browser)})")


async def test_garden_page_shows_a_pool_waking_then_awake_and_an_hour_of_polling_wakes_nothing(make_modal_garden, browser):
    metered = {"fast_interval": 0.02, "idle_interval": 3600, "sync_interval": 3600}
    garden = await make_modal_garden(metered=metered, gateway_api_keys=(f"owner:{KEY}",), ollama_model_list=("llama3.2",))
    garden.method.start_delay = 1.0
    await browser.send("Runtime.enable")
    await browser.send("Page.enable")
    await browser.send("Log.enable")
    await browser.send("Emulation.setDeviceMetricsOverride", width=1100, height=1000, deviceScaleFactor=1, mobile=False)
    await browser.send("Page.navigate", url=garden.url + "/")
    await browser.event("Page.loadEventFired")
    # It asks for the key once, keeps it in the tab's session storage, never in the URL.
    shown = "(id => getComputedStyle(document.getElementById(id)).display !== 'none')"
    assert await browser.evaluate(f"{shown}('key-form') && !{shown}('garden')")
    await browser.evaluate(f"document.getElementById('key-input').value = {json.dumps(KEY)}; document.getElementById('key-form').requestSubmit()")
    await until_state(browser, "asleep")
    assert await browser.evaluate(f"!{shown}('key-form') && {shown}('garden')")
    assert await browser.evaluate("sessionStorage.getItem('garden-key')") == KEY
    assert await browser.evaluate("location.href") == garden.url + "/"
    # A chat wakes the pool: the page shows it waking, then awake.
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {KEY}", "User-Agent": "garden-browser-test"}
        request = asyncio.create_task(http.post(garden.url + "/ollama/api/chat", json=CHAT, headers=headers))
        await until_state(browser, "waking")
        response = await asyncio.wait_for(request, STEP_TIMEOUT)
        assert response.status == 200
        await response.read()
    await until_state(browser, "awake")
    assert await browser.evaluate("document.querySelector('#pools tr[data-pool=\"default\"] td:nth-child(4)').textContent") == "1"
    cold = await browser.evaluate("[...document.querySelectorAll('#cold tbody td')].map(td => td.textContent)")
    assert "owner" in cold and "llama3.2:latest" in cold and "garden-browser-test" in cold
    tokens_shown = await browser.evaluate("[...document.querySelectorAll('#tokens tbody td')].map(td => td.textContent)")
    assert tokens_shown == ["owner", "llama3.2:latest", "12", "8"]
    assert await browser.evaluate("document.querySelectorAll('#chart svg rect').length") >= 1
    if os.environ.get("GARDEN_SCREENSHOT"):  # the README's picture, from this run
        shot = await browser.send("Page.captureScreenshot", format="png")
        SCREENSHOT.parent.mkdir(exist_ok=True)
        SCREENSHOT.write_bytes(base64.b64decode(shot["data"]))
    # The pool scales down; then an hour of polling every 5 s reaches neither a GPU nor Modal.
    garden.method.scale_to_zero()
    await until_state(browser, "asleep")
    calls, reads, seen = len(garden.method.calls), garden.method.stats_reads, len(garden.state.seen)
    polled = await browser.evaluate("(async () => { let n = 0; for (let i = 0; i < 720; i++) if (await garden.refresh()) n++; return n; })()")
    assert polled == 720
    assert (len(garden.method.calls), garden.method.stats_reads, len(garden.state.seen)) == (calls, reads, seen)
    violations = [e for e in browser.drain("Log.entryAdded") if "Content Security Policy" in e["entry"].get("text", "")]
    assert violations == []
