"""A minimal Ollama-format streaming upstream for the benchmark.

`tests/ollama_standin.py` is the faithful stand-in (every route, Origin and Host
checks, test controls). Under benchmark load it costs more CPU than the proxies it is
meant to feed (aiohttp's server, one `asyncio.sleep` per token per stream, a record
of every request), and its per-token sleeps drift, so the token rate sags as load
grows. On a 2-core machine that would be measuring the upstream, not the proxies.

This one only does what the benchmark drives: `GET /` ("Ollama is running", which
the gateway's start-up probe asks), `GET /api/version`, and streaming
`POST /api/chat` / `POST /api/generate` in Ollama's wire format: HTTP/1.1 keep-alive,
`Content-Type: application/x-ndjson`, chunked transfer encoding with one chunk per
line, `{"model", "created_at", "message": {...}, "done": false}` per token and a final
`"done": true` line with Ollama's duration fields. Line *i* of a stream is written at
`start + i / rate` (absolute schedule, no drift), from a timer callback rather than a
coroutine, on a raw `asyncio.Protocol`. `created_at` is the real UTC time the line was
written (microseconds), so the load generator can also measure per-token latency.

    python -m bench.upstream --port 11500 --rate 50 --tokens 100

`options.num_predict` in the request body sets the number of tokens of that stream.
`GET /bench/stats` answers counters (streams started, finished, cancelled, active).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from email.utils import formatdate
from bench.procs import raise_fd_limit

REPLY = "The sky is blue because air scatters short blue wavelengths of sunlight more than red ones."
WORDS = REPLY.split(" ")
# Each token's JSON-encoded content, as Ollama sends it (" word", the first without a space).
CONTENT = [json.dumps((" " if i else "") + w).encode() for i, w in enumerate(WORDS)]
CONTENT_LATER = [json.dumps(" " + w).encode() for w in WORDS]
MAX_HEAD = 64 * 1024


class Stamps:
    """Cheap `created_at` (RFC 3339, microseconds, UTC) and HTTP `Date` values."""

    def __init__(self) -> None:
        self._sec = -1
        self._prefix = ""
        self._date = b""

    def _roll(self, sec: int) -> None:
        self._sec = sec
        self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        self._date = formatdate(sec, usegmt=True).encode()

    def created_at(self) -> bytes:
        t = time.time()
        sec = int(t)
        if sec != self._sec:
            self._roll(sec)
        return f"{self._prefix}.{int((t - sec) * 1e6):06d}Z".encode()

    def date(self) -> bytes:
        sec = int(time.time())
        if sec != self._sec:
            self._roll(sec)
        return self._date


class Stats:
    def __init__(self) -> None:
        self.started = self.finished = self.cancelled = self.active = 0
        self.lines = 0

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("started", "finished", "cancelled", "active", "lines")}


class Server:
    def __init__(self, rate: float, tokens: int) -> None:
        self.rate = rate
        self.tokens = tokens
        self.stamps = Stamps()
        self.stats = Stats()


class Stream:
    """One streamed answer, written line by line from timer callbacks."""

    __slots__ = ("chat", "conn", "count", "handle", "i", "keep", "model", "server", "t0")

    def __init__(self, conn: Connection, model: bytes, chat: bool, count: int, keep: bool) -> None:
        self.conn = conn
        self.server = conn.server
        self.model = model
        self.chat = chat
        self.count = count
        self.keep = keep
        self.i = 0
        self.t0 = conn.loop.time()
        self.handle: asyncio.TimerHandle | None = None
        self.server.stats.started += 1
        self.server.stats.active += 1

    def _line(self) -> bytes:
        s = self.server.stamps
        i = self.i
        if i < self.count:
            content = (CONTENT if i < len(WORDS) else CONTENT_LATER)[i % len(WORDS)]
            if self.chat:
                return b'{"model":"%s","created_at":"%s","message":{"role":"assistant","content":%s},"done":false}\n' % (
                    self.model, s.created_at(), content)
            return b'{"model":"%s","created_at":"%s","response":%s,"done":false}\n' % (self.model, s.created_at(), content)
        tail = (
            b'"done":true,"done_reason":"stop","total_duration":1200000000,"load_duration":50000000,'
            b'"prompt_eval_count":12,"prompt_eval_duration":40000000,"eval_count":%d,"eval_duration":1000000000' % self.count
        )
        if self.chat:
            return b'{"model":"%s","created_at":"%s","message":{"role":"assistant","content":""},%s}\n' % (
                self.model, s.created_at(), tail)
        return b'{"model":"%s","created_at":"%s","response":"",%s,"context":[1,2,3]}\n' % (self.model, s.created_at(), tail)

    def emit(self) -> None:
        self.handle = None
        transport = self.conn.transport
        if transport is None or transport.is_closing():
            return
        line = self._line()
        data = b"%x\r\n%s\r\n" % (len(line), line)
        if self.i == 0:
            # Like Ollama (Go's net/http), the head goes out with the first line.
            data = (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nDate: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
                % self.server.stamps.date()
            ) + data
        self.server.stats.lines += 1
        if self.i >= self.count:  # the final line
            transport.write(data + b"0\r\n\r\n")
            self.server.stats.finished += 1
            self.server.stats.active -= 1
            self.conn.stream = None
            if self.keep:
                self.conn.process()  # a pipelined next request, if any
            else:
                transport.close()
            return
        transport.write(data)
        self.i += 1
        self.handle = self.conn.loop.call_at(self.t0 + self.i / self.server.rate, self.emit)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.server.stats.cancelled += 1
        self.server.stats.active -= 1


class Connection(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.stream: Stream | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stream is not None:
            self.stream.cancel()  # the client left: Ollama stops generating
            self.stream = None
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.stream is None:
            self.process()

    def process(self) -> None:
        while self.stream is None and self.transport is not None and not self.transport.is_closing():
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self._simple(431, b"text/plain", b"request header too large", keep=False)
                return
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            try:
                method, target, version = lines[0].split(" ", 2)
            except ValueError:
                self._simple(400, b"text/plain", b"bad request", keep=False)
                return
            headers = {}
            for raw in lines[1:]:
                name, _, value = raw.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._simple(411, b"text/plain", b"chunked request bodies are not supported here", keep=False)
                return
            length = int(headers.get("content-length") or 0)
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
            self.handle(method, target.split("?", 1)[0], body, keep)

    def _simple(self, status: int, ctype: bytes, body: bytes, keep: bool = True) -> None:
        reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed", 411: b"Length Required",
                  431: b"Request Header Fields Too Large"}.get(status, b"Error")
        head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nDate: %s\r\nContent-Length: %d\r\n%s\r\n" % (
            status, reason, ctype, self.server.stamps.date(), len(body), b"" if keep else b"Connection: close\r\n")
        assert self.transport is not None
        self.transport.write(head + body)
        if not keep:
            self.transport.close()

    def _json(self, status: int, obj: dict, keep: bool) -> None:
        self._simple(status, b"application/json; charset=utf-8", json.dumps(obj).encode(), keep)

    def handle(self, method: str, path: str, body: bytes, keep: bool) -> None:
        if path == "/" and method in ("GET", "HEAD"):
            return self._simple(200, b"text/plain; charset=utf-8", b"Ollama is running", keep)
        if path == "/api/version" and method == "GET":
            return self._json(200, {"version": "0.30.3-bench"}, keep)
        if path == "/bench/stats" and method == "GET":
            return self._json(200, self.server.stats.as_dict(), keep)
        if path in ("/api/chat", "/api/generate"):
            if method != "POST":
                return self._json(405, {"error": "method not allowed"}, keep)
            try:
                req = json.loads(body or b"null")
                assert isinstance(req, dict)
            except (ValueError, AssertionError):
                return self._json(400, {"error": "invalid request body"}, keep)
            model = req.get("model") or ""
            if not model:
                return self._json(400, {"error": "model is required"}, keep)
            if req.get("stream") is False:
                return self._json(400, {"error": "the benchmark upstream only streams"}, keep)
            count = int((req.get("options") or {}).get("num_predict") or self.server.tokens)
            self.stream = Stream(self, json.dumps(model)[1:-1].encode(), path == "/api/chat", count, keep)
            self.stream.emit()
            return None
        return self._simple(404, b"text/plain", b"404 page not found", keep)


async def serve(host: str, port: int, rate: float, tokens: int) -> None:
    server = Server(rate, tokens)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: Connection(server), host, port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"bench upstream listening on http://{host}:{port} ({rate:g} tokens/s, {tokens} tokens)", flush=True)
    await stop.wait()
    srv.close()
    print(f"bench upstream stats: {json.dumps(server.stats.as_dict())}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11500)
    parser.add_argument("--rate", type=float, default=50.0, help="tokens per second per stream")
    parser.add_argument("--tokens", type=int, default=100, help="tokens per stream unless options.num_predict says")
    args = parser.parse_args(argv)
    raise_fd_limit()
    asyncio.run(serve(args.host, args.port, args.rate, args.tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
