"""The soak: tens of thousands of abandoned streams through the gateway, then its RSS.

    python -m bench.soak          # 2–3 minutes on 2 cores, loopback only

Starts the bench upstream and the gateway (local mode, `python -m proxy`) on free
loopback ports, as `bench/stack.py` does but without nginx, and from this process opens
`--streams` streams (`POST /ollama/api/chat`, one connection each), at most
`--concurrency` at a time and `--conn-rate` new ones per second. Each client reads
`--lines` NDJSON lines and closes its socket, as a browser tab closed mid-answer does:
the gateway cancels the handler and drops the upstream connection. Every abandoned
stream leaves reference cycles (the cancellation's exception, futures, the upstream
connection with its transport and parser) that only the garbage collector frees; the
cycles of streams still open at a collection move on to an older generation.

The gateway's `VmRSS` (`/proc/<pid>/status`) is read before the soak, every 5,000
streams, at the end, after `--idle` seconds of idling, and after a full `gc.collect()`
in the gateway. The soak's prelude (`--gateway-prelude` in `bench/run.py`'s terms) counts
the gateway's collections by generation and times them, and answers `SIGUSR1` with
those counts (and, when asked, a full collection) in a file.

Each setting runs against a fresh gateway, in turn: the committed one
(`proxy/server.py: settle_heap`, `GC_THRESHOLDS`) and, for comparison, `settle_heap` as
it was before the fix (`gc.collect(); gc.freeze(); gc.set_threshold(100000, 50, 1000)`;
`--compare` sets other thresholds for it, `--compare ""` skips it). Writes `bench/SOAK.md`
(`--results DIR` to write elsewhere) and raw figures to `bench/out/soak.json`. Stops by
itself: no new streams after `--budget` seconds, none waited for past 15 s more.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):  # `python bench/soak.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs
from bench.stack import REPO

BENCH = REPO / "bench"
OLD_THRESHOLDS = "100000,50,1000"  # proxy/server.py before the fix (bench/HISTORY.md, section 6)

# Run in the gateway before its main: count and time collections by generation; on
# SIGUSR1 write them (and, when asked, what a full collection frees) to a file.
PRELUDE = """
import gc, json, os, signal, time
_soak = {"t": 0.0}
def _soak_reset():
    _soak.update(collections=[0, 0, 0], pause_max_ms=[0.0, 0.0, 0.0], pause_total_ms=[0.0, 0.0, 0.0])
_soak_reset()
def _soak_cb(phase, info):
    if phase == "start":
        _soak["t"] = time.perf_counter()
        return
    g, ms = info["generation"], 1000 * (time.perf_counter() - _soak["t"])
    _soak["collections"][g] += 1
    _soak["pause_max_ms"][g] = max(_soak["pause_max_ms"][g], ms)
    _soak["pause_total_ms"][g] += ms
gc.callbacks.append(_soak_cb)
def _soak_report(signum, frame):
    out = {k: _soak[k] for k in ("collections", "pause_max_ms", "pause_total_ms")}
    out.update(threshold=gc.get_threshold(), frozen=gc.get_freeze_count(), sizes=[len(gc.get_objects(g)) for g in range(3)])
    if os.path.exists(os.environ["SOAK_COLLECT_NOW"]):
        gc.callbacks.remove(_soak_cb)
        out["full_collect_freed"] = gc.collect()
        gc.callbacks.append(_soak_cb)
    _soak_reset()  # the next report covers what happens from now on
    with open(os.environ["SOAK_REPORT"] + ".tmp", "w") as f:
        json.dump(out, f)
    os.replace(os.environ["SOAK_REPORT"] + ".tmp", os.environ["SOAK_REPORT"])
signal.signal(signal.SIGUSR1, _soak_report)
"""

# settle_heap() as it was before the fix, with the thresholds of --compare.
OLD_SETTLE_HEAP = """
import proxy.server
def _settle_heap_before_the_fix():
    gc.collect()
    gc.freeze()
    gc.set_threshold({thresholds})
proxy.server.settle_heap = _settle_heap_before_the_fix  # python -m proxy imports it when main() runs
"""


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Gateway(procs.Started):
    """The bench upstream and one gateway process (local mode) with the soak's prelude."""

    def __init__(self, out: Path, name: str, prelude: str, rate: float) -> None:
        self.out, self.name, self.prelude, self.rate = out, name, prelude, rate
        self.procs_: dict[str, subprocess.Popen] = {}
        self.report = out / f"soak-{name}-gc.json"
        self.collect_flag = out / f"soak-{name}-collect"
        self.port = 0

    def start(self) -> None:
        py = sys.executable
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OLLAMA_"))}
        env["PYTHONUNBUFFERED"] = "1"
        up = procs.free_port()
        upstream = [py, "-m", "bench.upstream", "--port", str(up), "--rate", str(self.rate), "--tokens", "1000"]
        self._spawn("upstream", upstream, env)
        procs.wait_http(f"http://127.0.0.1:{up}/", self.procs_["upstream"], 20, b"Ollama is running")
        self.port = procs.free_port()
        code = PRELUDE + self.prelude + "\nimport sys\nfrom proxy.__main__ import main\nsys.exit(main(sys.argv[1:]))"
        gw_env = {**env, "OLLAMA_HOST": f"127.0.0.1:{up}", "SOAK_REPORT": str(self.report),
                  "SOAK_COLLECT_NOW": str(self.collect_flag)}
        self._spawn("gateway", [py, "-c", code, "--port", str(self.port)], gw_env)
        procs.wait_http(f"http://127.0.0.1:{self.port}/health", self.procs_["gateway"], 30, b"ok")
        procs.wait_http(f"http://127.0.0.1:{self.port}/ollama/", self.procs_["gateway"], 10, b"Ollama is running")

    def _spawn(self, what: str, cmd: list[str], env: dict[str, str]) -> None:
        with open(self.out / f"soak-{self.name}-{what}.log", "w") as log_file:
            self.procs_[what] = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                                                 stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.procs_["gateway"].pid

    def rss_mb(self) -> float:
        return procs.status_kb(self.pid, "VmRSS") / 1024

    def gc_state(self, collect: bool = False) -> dict:
        """The gateway's collections since the last call (with `collect`: and a full one's yield)."""
        self.report.unlink(missing_ok=True)
        if collect:
            self.collect_flag.touch()
        try:
            os.kill(self.pid, signal.SIGUSR1)
            deadline = time.monotonic() + 10
            while not self.report.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            return json.loads(self.report.read_text()) if self.report.exists() else {}
        finally:
            self.collect_flag.unlink(missing_ok=True)

    def stop(self) -> None:
        procs.stop(self.procs_.get("gateway"), signal.SIGINT)
        procs.stop(self.procs_.get("upstream"), signal.SIGTERM)
        self.report.unlink(missing_ok=True)


class Abandon(asyncio.Protocol):
    """One stream: send the request, read `lines` NDJSON lines, close the socket."""

    def __init__(self, request: bytes, lines: int, done: asyncio.Future) -> None:
        self.request, self.lines, self.done = request, lines, done
        self.seen = 0
        self.status = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.status:
            self.status = data[9:12]  # b"HTTP/1.1 200 ..."
        self.seen += data.count(b'"done":false')
        if self.seen >= self.lines or self.status != b"200":
            self.transport.close()  # the client goes away mid-stream
            if not self.done.done():
                self.done.set_result(self.status == b"200")

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_result(False)


async def abandon_streams(port: int, streams: int, lines: int, concurrency: int, conn_rate: float, budget: float,
                          rss_mb, every: int = 5000) -> dict:
    loop = asyncio.get_running_loop()
    body = json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "Why is the sky blue?"}],
                       "stream": True}).encode()
    request = (f"POST /ollama/api/chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    slots = asyncio.Semaphore(concurrency)
    counts = {"abandoned": 0, "failed": 0}
    trail: list[tuple[int, float]] = []  # (streams opened so far, the gateway's RSS then)

    async def one() -> None:
        done = loop.create_future()
        transport = None
        ok = False
        try:
            async with asyncio.timeout(10):
                transport, _ = await loop.create_connection(lambda: Abandon(request, lines, done), "127.0.0.1", port)
                ok = await done
        except (OSError, TimeoutError):
            pass
        finally:
            if transport is not None:
                transport.close()
            slots.release()
        counts["abandoned" if ok else "failed"] += 1

    t0 = loop.time()
    tasks: set[asyncio.Task] = set()
    started = 0
    for i in range(streams):
        if loop.time() - t0 > budget:
            break
        await asyncio.sleep(max(0.0, t0 + i / conn_rate - loop.time()))
        await slots.acquire()
        if i and i % every == 0:
            trail.append((i, rss_mb()))
        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        started += 1
    if tasks:
        await asyncio.wait(tasks, timeout=15)
    trail.append((started, rss_mb()))
    return {**counts, "started": started, "wall": loop.time() - t0, "rss_trail": trail}


def soak_one(args: argparse.Namespace, out: Path, name: str, prelude: str) -> dict:
    with Gateway(out, name.replace(" ", "-"), prelude, args.rate) as gw:
        time.sleep(1.0)
        gc0 = gw.gc_state()
        rss0 = gw.rss_mb()
        cpu0 = procs.cpu_seconds([gw.pid])
        log(f"{name}: gateway GC thresholds {tuple(gc0.get('threshold', ()))}, RSS {rss0:.0f} MB; {args.streams} streams, "
            f"{args.concurrency} at a time, each abandoned after {args.lines} lines")
        res = asyncio.run(abandon_streams(gw.port, args.streams, args.lines, args.concurrency, args.conn_rate, args.budget,
                                          gw.rss_mb))
        cpu = procs.cpu_seconds([gw.pid]) - cpu0
        rss_end = gw.rss_mb()
        peak = procs.status_kb(gw.pid, "VmHWM") / 1024
        gc_end = gw.gc_state()
        time.sleep(args.idle)
        rss_idle = gw.rss_mb()
        gc_full = gw.gc_state(collect=True)
        time.sleep(0.5)
        rss_collected = gw.rss_mb()
        alive = gw.procs_["gateway"].poll() is None
    row = {
        "name": name, "thresholds": gc0.get("threshold"), "frozen": gc0.get("frozen"), **res, "gateway_cpu_s": cpu,
        "rss_start_mb": rss0, "rss_end_mb": rss_end, "rss_idle_mb": rss_idle, "rss_after_full_collect_mb": rss_collected,
        "peak_mb": peak, "collections": gc_end.get("collections"), "pause_max_ms": gc_end.get("pause_max_ms"),
        "pause_total_ms": gc_end.get("pause_total_ms"), "gen_sizes_end": gc_end.get("sizes"),
        "full_collect_freed": gc_full.get("full_collect_freed"), "gateway_alive": alive,
    }
    log(f"{name}: {res['abandoned']} abandoned, {res['failed']} failed in {res['wall']:.0f}s; RSS {rss0:.0f} -> "
        f"{rss_end:.0f} MB at the end, {rss_idle:.0f} MB after {args.idle:g}s idle; collections by generation "
        f"{row['collections']}, objects left in each {row['gen_sizes_end']}, of which a full collection freed "
        f"{row['full_collect_freed']}")
    return row


def markdown(rows: list[dict], args: argparse.Namespace, info: dict) -> str:
    def trio(xs, fmt="{:.0f}") -> str:
        return " / ".join(fmt.format(x) for x in xs or ())

    lines = [
        "# Soak: the gateway's memory after abandoned streams",
        "",
        f"Generated by `python -m bench.soak` ({info['date']}, {info['git']}, {info['nproc']} cores, Python {info['python']}). "
        f"Each setting: a fresh gateway (local mode) in front of `bench/upstream.py` at {args.rate:g} tokens/s per stream; "
        f"{args.streams:,} streams, each on its own connection, at most {args.concurrency:,} open at once and "
        f"{args.conn_rate:g} started per second; each client reads {args.lines} NDJSON lines and closes its socket. "
        "RSS is the gateway's `VmRSS`. Collections and pauses are the gateway's own during the soak "
        "(pauses are wall time, on a machine the client and the upstream keep busy).",
        "",
        f"| gateway GC | streams abandoned / failed | gateway CPU | RSS before | RSS at the end | after {args.idle:g} s idle "
        "| collections, gen 0 / 1 / 2 | longest pause (ms) | all pauses (ms) | left for a full collection to free |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']}: thresholds ({', '.join(f'{x:,}' for x in r['thresholds'] or ())}) "
            f"| {r['abandoned']:,} / {r['failed']:,} | {r['gateway_cpu_s']:.0f} s | {r['rss_start_mb']:.0f} MB "
            f"| **{r['rss_end_mb']:.0f} MB** | **{r['rss_idle_mb']:.0f} MB** | {trio(r['collections'])} "
            f"| {trio(r['pause_max_ms'])} | {trio(r['pause_total_ms'])} | {r['full_collect_freed'] or 0:,} objects |")
    lines += ["", "RSS as the soak went on (MB, read when the stream of that number was opened):", "",
              "| gateway GC | " + " | ".join(f"{n:,}" for n, _ in rows[0]["rss_trail"]) + " |",
              "|---|" + "---|" * len(rows[0]["rss_trail"])]
    for r in rows:
        lines.append(f"| {r['name']} | " + " | ".join(f"{mb:.0f}" for _, mb in r["rss_trail"]) + " |")
    lines += ["", "Reproduce: `.venv/bin/python -m bench.soak` (options: `--help`; how it works: `bench/soak.py`).", ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description="The gateway's RSS after many abandoned streams.")
    p.add_argument("--streams", type=int, default=50_000, help="streams opened and abandoned per setting (default 50000)")
    p.add_argument("--lines", type=int, default=10, help="NDJSON lines each client reads before it closes (default 10)")
    p.add_argument("--concurrency", type=int, default=2000, help="streams open at once at most (default 2000)")
    p.add_argument("--conn-rate", type=float, default=1000, help="new streams per second at most (default 1000)")
    p.add_argument("--rate", type=float, default=5, help="the upstream's tokens/s per stream (default 5)")
    p.add_argument("--idle", type=float, default=5, help="seconds of idling before RSS is read again (default 5)")
    p.add_argument("--budget", type=float, default=100, help="no new streams after this many seconds (default 100)")
    p.add_argument("--compare", default=OLD_THRESHOLDS,
                   help=f"also run settle_heap() as before the fix, with these thresholds (default {OLD_THRESHOLDS}; "
                        "empty: only the committed settings)")
    p.add_argument("--out", default=str(BENCH / "out"), help="raw data and logs (default bench/out)")
    p.add_argument("--results", default=str(BENCH), help="where SOAK.md goes (default bench/)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    procs.raise_fd_limit()  # the gateway and the upstream inherit it
    settings = [("as committed", "")]
    if args.compare.strip():
        thresholds = ", ".join(str(int(x)) for x in args.compare.split(","))
        settings.append(("before the fix", OLD_SETTLE_HEAP.format(thresholds=thresholds)))
    rev = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True,
                         check=False).stdout.strip() or "?"
    info = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "git": rev, "nproc": os.cpu_count(),
            "python": platform.python_version()}
    rows = [soak_one(args, out, name, prelude) for name, prelude in settings]
    (out / "soak.json").write_text(json.dumps({"info": info, "args": vars(args), "rows": rows}, indent=1))
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "SOAK.md").write_text(markdown(rows, args, info))
    log(f"wrote {results / 'SOAK.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
