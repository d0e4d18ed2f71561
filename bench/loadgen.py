"""The load generator: concurrent streaming `/api/chat` requests, timed per line.

Runs as its own process (never inside a proxy) and talks to the driver over its
standard streams:

1. optional warm-up (same concurrency, a few tokens, nothing recorded), so connection
   pools behind each proxy are warm as in steady state;
2. prints `ready`, waits for `go <monotonic start time>` on stdin (the driver reads the
   proxies' CPU counters in between);
3. starts `--streams` streams spread evenly over `--ramp` seconds from that start time,
   each on its own client connection (a different user per stream), each bounded by
   `--deadline` seconds;
4. writes its measurements as JSON to `--out` and prints `done`.

Per stream: time to first byte (request sent -> first NDJSON line received), the gaps
between successive received lines, and per-line latency (receive time minus the
`created_at` the bench upstream stamped on the line, when it is real). A stream counts
as a failure if it gets a non-200 status, a connection error, no final `"done":true`
line, the wrong number of lines, or runs past its deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import gc
import json
import os
import resource
import sys
import time
from urllib.parse import urlsplit
from bench.procs import raise_fd_limit

BODY = {"model": "llama3.2", "messages": [{"role": "user", "content": "Why is the sky blue?"}], "stream": True}
CREATED = b'"created_at":"'


class Results:
    def __init__(self) -> None:
        self.ttfb: list[float] = []
        self.gaps: list[float] = []
        self.latency: list[float] = []
        self.ok = 0
        self.failures: dict[str, int] = {}
        self.lines = 0
        self.open = 0
        self.peak_open = 0
        self.latency_valid = True
        self._epochs: dict[bytes, int] = {}

    def fail(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1

    def emitted_at(self, line: bytes) -> float | None:
        i = line.find(CREATED)
        if i < 0:
            return None
        s = line[i + len(CREATED) : i + len(CREATED) + 26]  # 2026-11-27T10:00:00.123456
        prefix = s[:19]
        epoch = self._epochs.get(prefix)
        if epoch is None:
            try:
                epoch = calendar.timegm(time.strptime(prefix.decode(), "%Y-%m-%dT%H:%M:%S"))
            except ValueError:
                return None
            self._epochs[prefix] = epoch
        try:
            return epoch + int(s[20:26]) / 1e6
        except ValueError:
            return None


class StreamProtocol(asyncio.Protocol):
    """One streamed HTTP/1.1 exchange on its own connection, parsed by hand.

    A raw protocol instead of an HTTP client library: the client's own CPU and event
    loop delay are part of every figure it records (for direct and proxied runs alike),
    so each received chunk costs one callback and one clock read, not a coroutine
    wake-up per line.
    """

    def __init__(self, request: bytes, on_line, finished: asyncio.Future) -> None:
        self.request = request
        self.on_line = on_line
        self.finished = finished
        self.transport: asyncio.Transport | None = None
        self.raw = bytearray()
        self.body = bytearray()
        self.state = "head"
        self.status = 0
        self.remaining = 0
        self.chunked = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc) -> None:
        if not self.finished.done():
            if self.state == "close":  # a body delimited by the connection's end
                self.finished.set_result(self.status)
            else:
                self.finished.set_exception(exc or ConnectionResetError("connection closed mid-response"))

    def _lines(self, now: float) -> None:
        body = self.body
        start = 0
        while True:
            i = body.find(b"\n", start)
            if i < 0:
                break
            self.on_line(bytes(body[start : i + 1]), now)
            start = i + 1
        if start:
            del body[:start]

    def _end(self) -> None:
        if not self.finished.done():
            self.finished.set_result(self.status)
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        raw = self.raw
        raw += data
        if self.state == "head":
            end = raw.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(raw[:end]).decode("latin-1").split("\r\n")
            del raw[: end + 4]
            try:
                self.status = int(head[0].split(" ", 2)[1])
            except (IndexError, ValueError):
                self.finished.set_exception(ConnectionError(f"bad status line {head[0]!r}"))
                self.transport.close()
                return
            length = None
            for h in head[1:]:
                name, _, value = h.partition(":")
                name = name.strip().lower()
                if name == "transfer-encoding" and "chunked" in value.lower():
                    self.chunked = True
                elif name == "content-length":
                    length = int(value.strip())
            if self.chunked:
                self.state = "size"
            elif length is not None:
                self.state, self.remaining = "length", length
            else:
                self.state = "close"
        if self.state == "length" or self.state == "close":
            take = len(raw) if self.state == "close" else min(len(raw), self.remaining)
            self.body += raw[:take]
            del raw[:take]
            self.remaining -= take
            self._lines(now)
            if self.state == "length" and self.remaining <= 0:
                self._end()
            return
        pos = 0
        n = len(raw)
        while pos < n:
            if self.state == "size":
                i = raw.find(b"\r\n", pos)
                if i < 0:
                    break
                size = int(bytes(raw[pos:i]).split(b";")[0], 16)
                pos = i + 2
                if size == 0:
                    self.state = "done"
                    break
                self.state, self.remaining = "data", size
            elif self.state == "data":
                take = min(n - pos, self.remaining)
                self.body += raw[pos : pos + take]
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self.state = "crlf"
            elif self.state == "crlf":
                if n - pos < 2:
                    break
                pos += 2
                self.state = "size"
        del raw[:pos]
        self._lines(now)
        if self.state == "done":
            self._end()


async def one_stream(host: str, port: int, request: bytes, start_at: float, expected_lines: int,
                     deadline: float, res: Results | None) -> None:
    loop = asyncio.get_running_loop()
    delay = start_at - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)
    wall = time.time
    t0 = time.monotonic()
    if res is not None:
        res.open += 1
        res.peak_open = max(res.peak_open, res.open)
    state = {"n": 0, "first": 0.0, "last": 0.0, "done": False}
    gaps: list[float] = []
    lats: list[float] = []

    def on_line(line: bytes, now: float) -> None:
        n = state["n"]
        if n == 0:
            state["first"] = now
        else:
            gaps.append(now - state["last"])
        state["last"] = now
        state["n"] = n + 1
        if res is not None and res.latency_valid:
            emitted = res.emitted_at(line)
            if emitted is not None:
                lat = wall() - emitted
                if -0.5 < lat < 60:
                    lats.append(lat)
                else:
                    res.latency_valid = False  # a fixed created_at (the aiohttp stand-in)
        if b'"done":true' in line or b'"done": true' in line:
            state["done"] = True

    finished = loop.create_future()
    transport = None
    try:
        async with asyncio.timeout(deadline):
            transport, _ = await loop.create_connection(lambda: StreamProtocol(request, on_line, finished), host, port)
            status = await finished
        if res is None:
            return
        n = state["n"]
        res.lines += n
        if status != 200:
            res.fail(f"HTTP {status}")
        elif not state["done"]:
            res.fail("no final done line")
        elif n != expected_lines:
            res.fail(f"{n} lines, expected {expected_lines}")
        else:
            res.ok += 1
            res.ttfb.append(state["first"] - t0)
            res.gaps.extend(gaps)
            res.latency.extend(lats)
    except TimeoutError:
        if res is not None:
            res.fail("deadline exceeded")
            res.lines += state["n"]
    except OSError as exc:  # refused, reset, closed mid-response
        if res is not None:
            res.fail(type(exc).__name__)
            res.lines += state["n"]
    finally:
        if transport is not None:
            transport.close()
        if res is not None:
            res.open -= 1


async def run_streams(url: str, streams: int, tokens: int, ramp: float, deadline: float, start_at: float,
                      res: Results | None) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    body = json.dumps({**BODY, "options": {"num_predict": tokens}}).encode()
    # A new connection per stream, closed after its answer: each stream is its own user.
    key = os.environ.get("BENCH_API_KEY")  # the keyed run of the cost split
    request = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        + (f"Authorization: Bearer {key}\r\n" if key else "")
        + f"Accept: application/x-ndjson\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    step = ramp / streams if streams else 0
    await asyncio.gather(
        *(one_stream(host, port, request, start_at + i * step, tokens + 1, deadline, res) for i in range(streams))
    )


def watch_gc() -> list[float]:
    """Durations of this process's garbage collections from now on."""
    pauses: list[float] = []
    started = [0.0]

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append(time.perf_counter() - started[0])

    gc.callbacks.append(callback)
    return pauses


async def watch_loop(lag: list[float], every: float = 0.005) -> None:
    """How late a 5 ms timer fires: this event loop's own delay."""
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(every)
        lag.append(loop.time() - t - every)


async def main_async(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    if args.warmup_tokens > 0:
        await run_streams(args.url, args.streams, args.warmup_tokens, args.ramp, args.deadline, loop.time(), None)
    print("ready", flush=True)
    line = await loop.run_in_executor(None, sys.stdin.readline)
    parts = line.split()
    if not parts or parts[0] != "go":
        raise SystemExit(f"loadgen: expected 'go <time>', got {line!r}")
    # time.monotonic() and the loop's clock are both CLOCK_MONOTONIC: one schedule for all clients.
    start_at = float(parts[1]) if len(parts) > 1 else loop.time()
    res = Results()
    gc_pauses = watch_gc()
    lag: list[float] = []
    ticker = asyncio.create_task(watch_loop(lag))
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    await run_streams(args.url, args.streams, args.tokens, args.ramp, args.deadline, start_at, res)
    wall = time.monotonic() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    ticker.cancel()
    gc.callbacks.clear()
    out = {
        "streams": args.streams,
        "ok": res.ok,
        "failures": res.failures,
        "lines": res.lines,
        "peak_open": res.peak_open,
        "ttfb": [round(x, 7) for x in res.ttfb],
        "gaps": [round(x, 7) for x in res.gaps],
        "latency": [round(x, 7) for x in res.latency] if res.latency_valid else [],
        "cpu": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
        "wall": wall,
        "maxrss_kb": cpu1.ru_maxrss,
        # The client's own stalls, which delay what it records for any target alike.
        "client_gc_max": max(gc_pauses, default=0.0),
        "client_gc_total": sum(gc_pauses),
        "client_lag_max": max(lag, default=0.0),
        "client_lag_p99": sorted(lag)[int(len(lag) * 0.99)] if lag else 0.0,
    }
    with open(args.out, "w") as f:
        json.dump(out, f)
    print("done", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description="streaming /api/chat load generator")
    parser.add_argument("--url", required=True, help="the /api/chat URL to drive")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=100, help="tokens per stream (options.num_predict)")
    parser.add_argument("--ramp", type=float, default=0.5, help="seconds over which the streams start")
    parser.add_argument("--deadline", type=float, default=30.0, help="seconds a stream may take in all")
    parser.add_argument("--warmup-tokens", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    raise_fd_limit()
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
