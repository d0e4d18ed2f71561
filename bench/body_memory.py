"""What one big request body costs the gateway's memory (issue 17): `python -m bench.body_memory`.

Starts `python -m proxy` (local mode, no Ollama needed) with a key limited to one model,
sends bodies of `[{},{},...]`, `{"model": ..., "messages": [{},{},...]}` and of many
top-level keys, `--mb` megabytes each, with that key, and reads the gateway's VmRSS before, every 10 ms while the
request is in flight, and after. `/health` is timed meanwhile: how long the event loop
stalls. `--checkout DIR` runs the gateway from another checkout (the code before a change).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from bench.procs import free_port, status_kb, stop, wait_http

REPO = Path(__file__).resolve().parent.parent


def bodies(mb: int) -> dict[str, bytes]:
    count = mb * 1024 * 1024 // 3
    return {
        "[{},{},…]": b"[" + b"{}," * count + b"{}]",
        '{"model","messages":[{},…]}': b'{"model":"tiny","messages":[' + b"{}," * count + b"{}]}",
        '{"a":1,"a":1,…,"model"}': b"{" + b'"a":1,' * (count // 2) + b'"model":"tiny"}',
    }


async def measure(url: str, pid: int, body: bytes) -> dict[str, float]:
    samples: list[int] = []
    stalls: list[float] = []
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            samples.append(status_kb(pid, "VmRSS"))
            await asyncio.sleep(0.01)

    async def health(http: aiohttp.ClientSession) -> None:
        while not done.is_set():
            started = time.perf_counter()
            async with http.get(url + "/health") as response:
                await response.read()
            stalls.append(time.perf_counter() - started)
            await asyncio.sleep(0.02)

    before = status_kb(pid, "VmRSS")
    async with aiohttp.ClientSession() as http, aiohttp.ClientSession() as probe:
        tasks = [asyncio.ensure_future(sample()), asyncio.ensure_future(health(probe))]
        started = time.perf_counter()
        async with http.post(url + "/ollama/api/chat", data=body, headers={"Authorization": "Bearer sk-partner"}) as response:
            status = response.status
            await response.read()
        elapsed = time.perf_counter() - started
        done.set()
        await asyncio.gather(*tasks)
    await asyncio.sleep(1.0)
    after = status_kb(pid, "VmRSS")
    return {"status": status, "before": before / 1024, "peak": max(samples + [before]) / 1024, "after": after / 1024,
            "seconds": elapsed, "health_max_ms": max(stalls, default=0) * 1000}  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--checkout", default=str(REPO), help="the checkout whose gateway runs (default: this one)")
    args = parser.parse_args()
    port = free_port()
    env = {**os.environ, "GATEWAY_API_KEYS": "owner:sk-owner,partner:sk-partner", "GATEWAY_KEY_POLICY": '{"partner": {"models": ["tiny"]}}',
           "GATEWAY_MAX_BODY_MB": str(args.mb + 10), "OLLAMA_HOST": f"127.0.0.1:{free_port()}", "PATH": "/nonexistent"}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "--port", str(port)], cwd=args.checkout, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/health", proc, 30)
        commit = subprocess.run(["git", "-C", args.checkout, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        print(f"gateway at {commit}, bodies of {args.mb} MB with a key limited to one model\n")
        print("| body | status | RSS before (MB) | peak (MB) | after (MB) | peak − before | request (s) | slowest /health (ms) |")
        print("|---|---|---|---|---|---|---|---|")
        for name, body in bodies(args.mb).items():
            m = await measure(url, proc.pid, body)
            print(f"| `{name}` | {m['status']:.0f} | {m['before']:.0f} | {m['peak']:.0f} | {m['after']:.0f} | "
                  f"{m['peak'] - m['before']:.0f} ({(m['peak'] - m['before']) / args.mb:.1f}× the body) | {m['seconds']:.2f} | {m['health_max_ms']:.0f} |")  # fmt: skip
    finally:
        stop(proc)


if __name__ == "__main__":
    asyncio.run(main())
