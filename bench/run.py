"""The streaming benchmark: direct vs the gateway vs nginx, in one command.

    python -m bench            # or: python bench/run.py   (from the repo root)

Starts the upstream, the gateway (local mode) and nginx on free loopback ports, drives
the same streaming `/api/chat` load through each from a separate load-generator
process, and writes bench/RESULTS.md and bench/results.png (raw data and logs go to
bench/out/). See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs
from bench.stack import REPO, Stack, nginx_binary, nginx_version

TARGETS = ("direct", "gateway", "nginx")
PROXIES = ("gateway", "nginx")
BENCH = REPO / "bench"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Sampler(threading.Thread):
    """Peak summed RSS of each process group while a load runs (every 100 ms)."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        super().__init__(daemon=True)
        self.groups = groups
        self.peak = {k: 0 for k in groups}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for k, pids in self.groups.items():
                self.peak[k] = max(self.peak[k], sum(procs.status_kb(p, "VmRSS") for p in pids))
            self.halt.wait(0.1)


def run_load(stack: Stack, target: str, streams: int, tokens: int, ramp: float, deadline: float, warmup_tokens: int,
             out: Path, clients: int, client_env: dict[str, str] | None = None) -> dict:
    """One measured load through `target`; returns the merged client results and the CPU deltas."""
    loaders = []
    for k in range(clients):
        n = streams // clients + (1 if k < streams % clients else 0)
        cmd = [sys.executable, "-m", "bench.loadgen", "--url", stack.url(target), "--streams", str(n), "--tokens", str(tokens),
               "--ramp", str(ramp), "--deadline", str(deadline), "--warmup-tokens", str(warmup_tokens),
               "--out", str(out.with_suffix(f".{k}.json"))]
        loaders.append(subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        start_new_session=True, env={**os.environ, **(client_env or {})}))
    try:
        for p in loaders:
            line = p.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"load generator did not get ready (said {line!r}, exit {p.poll()})")
        groups = {"gateway": stack.pids("gateway"), "nginx": stack.pids("nginx"), "upstream": stack.pids("upstream"),
                  "client": [p.pid for p in loaders]}
        cpu0 = {k: procs.cpu_seconds(v) for k, v in groups.items()}
        sys0, me0 = procs.system_cpu(), procs.cpu_seconds([os.getpid()])
        drops0 = procs.listen_drops()
        sampler = Sampler(groups)
        sampler.start()
        t0 = time.monotonic()
        start_at = t0 + 0.1
        for k, p in enumerate(loaders):  # one schedule: client k starts streams k, k+K, ...
            p.stdin.write(f"go {start_at + k * ramp / max(streams, 1):.6f}\n")
            p.stdin.flush()
        for p in loaders:
            line = p.stdout.readline().strip()
            if line != "done":
                raise RuntimeError(f"load generator failed (said {line!r}, exit {p.wait()})")
        wall = time.monotonic() - t0
        cpu1 = {k: procs.cpu_seconds(v) for k, v in groups.items()}
        sys1, me1 = procs.system_cpu(), procs.cpu_seconds([os.getpid()])
        sampler.halt.set()
        sampler.join()
        drops1 = procs.listen_drops()
        for p in loaders:
            p.wait(10)
    finally:
        for p in loaders:
            procs.stop(p)
    merged: dict = {"ttfb": [], "gaps": [], "latency": [], "ok": 0, "failures": {}, "lines": 0, "peak_open": 0, "client_cpu_self": 0.0}
    for k in range(clients):
        path = out.with_suffix(f".{k}.json")
        part = json.loads(path.read_text())
        path.unlink()
        for key in ("ttfb", "gaps", "latency"):
            merged[key] += part[key]
        merged["ok"] += part["ok"]
        merged["lines"] += part["lines"]
        merged["peak_open"] += part["peak_open"]  # an upper bound when clients > 1
        merged["client_cpu_self"] += part["cpu"]
        for key in ("client_gc_max", "client_lag_max", "client_lag_p99"):
            merged[key] = max(merged.get(key, 0.0), part[key])
        merged["client_gc_total"] = merged.get("client_gc_total", 0.0) + part["client_gc_total"]
        for reason, n in part["failures"].items():
            merged["failures"][reason] = merged["failures"].get(reason, 0) + n
    merged.update(
        target=target, streams=streams, tokens=tokens, wall=wall,
        cpu={k: cpu1[k] - cpu0[k] for k in cpu0},
        # CPU used meanwhile by processes that are not part of the benchmark (others' work on a shared machine).
        background_cpu=max(0.0, sys1["busy"] - sys0["busy"] - sum(cpu1[k] - cpu0[k] for k in cpu0) - (me1 - me0)),
        steal=sys1["steal"] - sys0["steal"],
        peak_rss_kb=sampler.peak,
        listen_drops={k: drops1.get(k, 0) - drops0.get(k, 0) for k in drops0},
        alive=stack.alive(),
    )
    return merged


def machine_info() -> dict:
    cpu = ""
    try:
        cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                    if l.startswith("model name")), "")
    except OSError:
        pass
    try:
        import aiohttp

        aiohttp_version = aiohttp.__version__
    except ImportError:
        aiohttp_version = "?"
    try:
        rev = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True,
                             check=False).stdout.strip() or "?"
    except OSError:
        rev = "?"
    return {
        "git": rev,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp_version,
        "nginx": nginx_version(nginx_binary() or "nginx"),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description="Streaming benchmark: direct vs gateway vs nginx.")
    p.add_argument("--upstream", choices=("bench", "standin"), default="bench",
                   help="bench: bench/upstream.py (default); standin: tests/ollama_standin.py")
    p.add_argument("--streams", type=int, default=200, help="concurrent streams in the steady phase (default 200)")
    p.add_argument("--rate", type=float, default=50, help="tokens/s per stream in the steady phase (default 50)")
    p.add_argument("--tokens", type=int, default=100, help="tokens per stream in the steady phase (default 100)")
    p.add_argument("--ramp", type=float, default=0.5, help="seconds over which the steady phase's streams start")
    p.add_argument("--rounds", type=int, default=5, help="steady-phase rounds per target, order rotated (default 5)")
    p.add_argument("--sat-steps", default="500,1000,2000", help="saturation concurrency steps (default 500,1000,2000)")
    p.add_argument("--sat-rate", type=float, default=5, help="tokens/s per stream in the saturation phase (default 5)")
    p.add_argument("--sat-tokens", type=int, default=20, help="tokens per stream in the saturation phase (default 20)")
    p.add_argument("--sat-conn-rate", type=float, default=1000, help="new streams per second while ramping up (default 1000)")
    p.add_argument("--split-tokens", default="4,400",
                   help="cost split: short and long stream lengths run through each proxy, to separate CPU per stream "
                        "from CPU per token (default 4,400; empty: skip)")
    p.add_argument("--clients", type=int, default=1, help="load-generator processes (default 1: the machine has 2 cores)")
    p.add_argument("--profile", choices=("auto", "on", "off"), default="auto",
                   help="py-spy profile of the gateway under the steady load: auto = when a target is missed")
    p.add_argument("--quiet-threshold", type=float, default=0.2,
                   help="redo a run if other processes and hypervisor steal took more than this many cores meanwhile (default 0.2)")
    p.add_argument("--quiet-budget", type=float, default=90, help="seconds of waiting and redoing allowed in all (default 90)")
    p.add_argument("--retries", type=int, default=2, help="redos per run at most (default 2)")
    p.add_argument("--gateway-uvloop", action="store_true", help="experiment: run the gateway on uvloop (pip install uvloop)")
    p.add_argument("--gateway-prelude", default="", metavar="PYTHON",
                   help="experiment: Python run in the gateway process before its main, e.g. a monkeypatch to try a fix")
    p.add_argument("--gateway-python", default="", metavar="PATH",
                   help="experiment: the interpreter that runs the gateway (e.g. another venv's bin/python)")
    p.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE",
                   help="experiment: extra environment for the gateway process (repeatable)")
    p.add_argument("--baseline", default="", metavar="DIR",
                   help="also run the cost split through the gateway of another checkout (e.g. `git worktree add DIR <rev>`): "
                        "before and after a change, in the same run")
    p.add_argument("--out", default=str(BENCH / "out"), help="raw data and logs (default bench/out)")
    p.add_argument("--results", default=str(BENCH), help="where RESULTS.md and results.png go (default bench/)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 1 round, 100 streams, steps 200,500")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.streams, args.tokens, args.sat_steps, args.split_tokens = 1, 100, 50, "200,500", "4,100"
    args.split = [int(s) for s in args.split_tokens.split(",") if s.strip()]
    if args.split and (len(args.split) != 2 or args.split[0] >= args.split[1]):
        p.error("--split-tokens takes two lengths, short then long, e.g. 4,400")
    args.steps = [int(s) for s in args.sat_steps.split(",") if s.strip()]
    return args


def profile_gateway(args: argparse.Namespace, out: Path, stack_kw: dict) -> dict | None:
    """py-spy on the gateway under two loads: the steady one (cost per token) and a churn
    of short streams started at the saturation phase's rate (cost per request)."""
    from bench import profile

    pyspy = profile.pyspy_binary()
    if pyspy is None:
        log("py-spy is not installed (pip install -r bench/requirements.txt): no profile")
        return None
    tokens = 3 * args.tokens  # a longer load than a steady round, for more samples
    churn_streams, churn_tokens = 3 * args.sat_conn_rate, 4
    loads = {
        "steady": {"streams": args.streams, "tokens": tokens, "ramp": args.ramp, "seconds": args.ramp + tokens / args.rate},
        "churn": {"streams": int(churn_streams), "tokens": churn_tokens, "ramp": churn_streams / args.sat_conn_rate,
                  "seconds": churn_streams / args.sat_conn_rate + churn_tokens / args.rate},
    }
    found = {}
    with Stack(args.upstream, args.rate, tokens, out, "profile", **stack_kw) as st:
        for name, load in loads.items():
            raw = out / f"gateway-profile-{name}.txt"
            duration = math.ceil(load["seconds"] + 1.5)
            rec = subprocess.Popen([pyspy, "record", "-p", str(st.procs_["gateway"].pid), "-r", "400", "-d", str(duration),
                                    "--format", "raw", "-o", str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            time.sleep(1.0)
            run_load(st, "gateway", load["streams"], load["tokens"], load["ramp"], 2 * load["seconds"] + 5, 0,
                     out / f"profile-{name}", 1)
            _, err = rec.communicate(timeout=duration + 30)
            if rec.returncode != 0 or not raw.exists():
                log(f"py-spy failed: {err.strip()[-300:]}")
                return None
            found[name] = {**profile.summarise(raw), "load": f"{load['streams']} streams x {load['tokens']} tokens"}
    return found


class Guard:
    """Other work on a shared machine (a test suite, a build) skews every latency figure.
    Before each measured run, wait (a little) for the machine to be quiet; after it, redo
    the run if other processes used more than `threshold` of a core meanwhile. Bounded by
    `budget` seconds of waiting and redoing in all, and `retries` redos per run."""

    def __init__(self, threshold: float, budget: float, retries: int) -> None:
        self.threshold = threshold
        self.budget = budget
        self.spent = 0.0  # waiting for quiet plus runs measured again
        self.retries = retries
        self.discarded: list[dict] = []
        self.waited = 0.0

    def background(self, stack: Stack, seconds: float = 0.5) -> float:
        """Cores taken over `seconds` by processes outside the benchmark, or by the
        hypervisor (steal: this VM's vCPUs waiting for a physical CPU)."""
        pids = [os.getpid(), *(p for w in ("upstream", "gateway", "nginx") for p in stack.pids(w))]
        s0, c0 = procs.system_cpu(), procs.cpu_seconds(pids)
        time.sleep(seconds)
        s1, c1 = procs.system_cpu(), procs.cpu_seconds(pids)
        return (max(0.0, (s1["busy"] - s0["busy"]) - (c1 - c0)) + (s1["steal"] - s0["steal"])) / seconds

    def wait_quiet(self, stack: Stack, longest: float = 15.0) -> None:
        start = time.monotonic()
        until = start + min(longest, max(0.0, self.budget - self.spent))
        while True:
            bg = self.background(stack)
            if bg <= self.threshold or time.monotonic() >= until:
                break
        waited = time.monotonic() - start
        self.waited += waited
        self.spent += waited
        if waited > 1:
            log(f"  waited {waited:.0f}s for other processes to calm down (now {100 * bg:.0f}% of a core)")

    def measure(self, stack: Stack, label: str, **kw) -> dict:
        for attempt in range(self.retries + 1):
            self.wait_quiet(stack)
            t0 = time.monotonic()
            res = run_load(stack, **kw)
            res["background_util"] = res["background_cpu"] / res["wall"]
            res["steal_util"] = res["steal"] / res["wall"]
            res["attempt"] = attempt
            disturbed = res["background_util"] + res["steal_util"]
            if disturbed <= self.threshold or attempt == self.retries or self.spent >= self.budget:
                return res
            self.spent += time.monotonic() - t0
            self.discarded.append({"run": label, "background_util": res["background_util"], "steal_util": res["steal_util"]})
            log(f"  other processes used {100 * res['background_util']:.0f}% and the hypervisor stole "
                f"{100 * res['steal_util']:.0f}% of a core meanwhile: measuring again")
        raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if nginx_binary() is None:
        print("bench: nginx is not installed, and the benchmark compares the gateway with it.\n"
              "       Install it (Debian/Ubuntu: `apt-get update && apt-get install -y nginx`) and run again.", file=sys.stderr)
        return 2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("bench: matplotlib is missing: `pip install -r bench/requirements.txt` (into the venv you run the bench with).",
              file=sys.stderr)
        return 2
    if args.gateway_uvloop:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            print("bench: --gateway-uvloop needs uvloop: `pip install uvloop`.", file=sys.stderr)
            return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    limit = procs.raise_fd_limit()
    if limit < 4 * max(args.steps + [args.streams]) + 256:
        log(f"warning: open-file limit is {limit}; the top step needs about {4 * max(args.steps) + 256}")
    info = machine_info()
    info["fd_limit"] = limit
    started = time.monotonic()
    log(f"machine: {info['nproc']} cores, Python {info['python']}, nginx {info['nginx']}, upstream={args.upstream}")
    stack_kw = {"nginx_keepalive": max(64, max(args.steps + [args.streams])), "gateway_uvloop": args.gateway_uvloop,
                "gateway_env": dict(kv.split("=", 1) for kv in args.gateway_env), "gateway_prelude": args.gateway_prelude,
                "gateway_python": args.gateway_python}
    guard = Guard(args.quiet_threshold, args.quiet_budget, args.retries)

    # Steady phase: the realistic load, several rounds, the targets' order rotated each round.
    steady_runs: dict[str, list[dict]] = {t: [] for t in TARGETS}
    warmup = math.ceil(args.ramp * args.rate) + 2  # long enough that all streams overlap: warm pools
    with Stack(args.upstream, args.rate, args.tokens, out, "steady", **stack_kw) as st:
        for r in range(args.rounds):
            for target in TARGETS[r % 3 :] + TARGETS[: r % 3]:
                log(f"steady round {r + 1}/{args.rounds}: {target}, {args.streams} streams x {args.rate:g} tokens/s x {args.tokens} tokens")
                res = guard.measure(st, f"steady {target} round {r + 1}", target=target, streams=args.streams,
                                    tokens=args.tokens, ramp=args.ramp, deadline=2 * args.tokens / args.rate + 5,
                                    warmup_tokens=warmup, out=out / f"steady-{target}-{r}", clients=args.clients)
                steady_runs[target].append(res)
                log(f"  ok {res['ok']}/{args.streams}, failures {res['failures'] or 0}, "
                    f"cpu {', '.join(f'{k} {v:.2f}s' for k, v in res['cpu'].items())}, "
                    f"others {100 * res['background_util']:.0f}%, steal {100 * res['steal_util']:.0f}%")
        steady_hwm = {t: st.peak_memory_kb(t) for t in ("gateway", "nginx", "upstream")}

    # Cost split: short and long streams through each proxy. CPU per stream is a fixed part
    # (accept, parse, route, log: per request) plus a part per relayed token; two lengths
    # give both, so a CPU-per-token ratio can be read for any stream length.
    split_runs: dict[str, dict[int, dict]] = {}
    keyed_split: dict[int, dict] = {}
    baseline_split: dict[str, dict[int, dict]] = {"plain": {}, "keys": {}}
    baseline_kw = {**stack_kw, "gateway_cwd": args.baseline}
    if args.split:
        with Stack(args.upstream, args.rate, max(args.split), out, "split", **stack_kw) as st, \
                (Stack(args.upstream, args.rate, max(args.split), out, "split-baseline", **baseline_kw) if args.baseline else nullcontext()) as bt:
            for target in PROXIES:
                for tokens in args.split:
                    log(f"cost split: {target}, {args.streams} streams x {tokens} tokens")
                    res = guard.measure(st, f"split {target} {tokens}", target=target, streams=args.streams, tokens=tokens,
                                        ramp=args.ramp, deadline=2 * tokens / args.rate + 5, warmup_tokens=warmup,
                                        out=out / f"split-{target}-{tokens}", clients=args.clients)
                    split_runs.setdefault(target, {})[tokens] = res
                    log(f"  ok {res['ok']}/{args.streams}, cpu {res['cpu'][target]:.2f}s")
                    if bt is not None and target == "gateway":  # the code before, right after: the same conditions
                        log(f"cost split: the baseline gateway ({args.baseline}), {args.streams} streams x {tokens} tokens")
                        res = guard.measure(bt, f"split baseline {tokens}", target="gateway", streams=args.streams, tokens=tokens,
                                            ramp=args.ramp, deadline=2 * tokens / args.rate + 5, warmup_tokens=warmup,
                                            out=out / f"split-baseline-{tokens}", clients=args.clients)
                        baseline_split["plain"][tokens] = res
                        log(f"  ok {res['ok']}/{args.streams}, cpu {res['cpu']['gateway']:.2f}s")
        # The same split through a gateway that checks a named key, applies its policy
        # (an allowlist and limits it never reaches) and counts its tokens.
        keyed_env = {"GATEWAY_API_KEYS": "bench:sk-bench-key",
                     "GATEWAY_KEY_POLICY": '{"bench": {"models": ["llama3.2"], "max_streams": 100000, "requests_per_minute": 10000000}}'}
        keyed_kw = {**stack_kw, "gateway_env": {**stack_kw["gateway_env"], **keyed_env}}
        with Stack(args.upstream, args.rate, max(args.split), out, "split-keys", **keyed_kw) as st, \
                (Stack(args.upstream, args.rate, max(args.split), out, "split-keys-baseline", **{**keyed_kw, "gateway_cwd": args.baseline})
                 if args.baseline else nullcontext()) as bt:
            for tokens in args.split:
                for who, stack in (("gateway", st), ("baseline", bt)):
                    if stack is None:
                        continue
                    log(f"cost split: {who} with keys, a policy and token accounting, {args.streams} streams x {tokens} tokens")
                    res = guard.measure(stack, f"split {who}+keys {tokens}", target="gateway", streams=args.streams, tokens=tokens,
                                        ramp=args.ramp, deadline=2 * tokens / args.rate + 5, warmup_tokens=warmup,
                                        out=out / f"split-keys-{who}-{tokens}", clients=args.clients, client_env={"BENCH_API_KEY": "sk-bench-key"})
                    (keyed_split if who == "gateway" else baseline_split["keys"])[tokens] = res
                    log(f"  ok {res['ok']}/{args.streams}, cpu {res['cpu']['gateway']:.2f}s")

    # Saturation phase: step the concurrency up until a target fails or the top step is done.
    sat_runs: dict[str, list[dict]] = {t: [] for t in TARGETS}
    failed = {t: False for t in TARGETS}
    with Stack(args.upstream, args.sat_rate, args.sat_tokens, out, "saturation", **stack_kw) as st:
        for step in args.steps:
            ramp = max(0.5, step / args.sat_conn_rate)
            for target in TARGETS:
                if failed[target]:
                    continue
                log(f"saturation: {target}, {step} streams x {args.sat_rate:g} tokens/s x {args.sat_tokens} tokens, ramp {ramp:g}s")
                res = guard.measure(st, f"saturation {target} {step}", target=target, streams=step, tokens=args.sat_tokens,
                                    ramp=ramp, deadline=2 * args.sat_tokens / args.sat_rate + 10, warmup_tokens=0,
                                    out=out / f"sat-{target}-{step}", clients=args.clients)
                res["ramp"] = ramp
                sat_runs[target].append(res)
                nfail = sum(res["failures"].values())
                log(f"  ok {res['ok']}/{step}, failures {res['failures'] or 0}, peak open {res['peak_open']}, "
                    f"others {100 * res['background_util']:.0f}%, steal {100 * res['steal_util']:.0f}%")
                if nfail:
                    failed[target] = True
        sat_hwm = {t: st.peak_memory_kb(t) for t in ("gateway", "nginx", "upstream")}

    from bench import report

    results = report.build(args, info, steady_runs, sat_runs, steady_hwm, sat_hwm, split_runs)
    results["split_keys"] = report.cost_split(keyed_split, "gateway") if keyed_split else None
    if args.baseline:
        commit = subprocess.run(["git", "-C", args.baseline, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        results["baseline"] = {"dir": args.baseline, "commit": commit or "?",
                               **{kind: report.cost_split(runs, "gateway") for kind, runs in baseline_split.items()}}
    from bench import idle

    log("idle hour: backend calls caused by idle chat tabs, before and after the catalog")
    results["idle"] = idle.measure()
    results["quiet"] = {"threshold": args.quiet_threshold, "discarded": guard.discarded, "waited": guard.waited}
    missed = [t["name"] for t in results["targets"] if not t["pass"]]
    if args.profile == "on" or (args.profile == "auto" and missed):
        log("profiling the gateway under the steady load with py-spy" + (f" (missed: {', '.join(missed)})" if missed else ""))
        results["profile"] = profile_gateway(args, out, stack_kw)
    results["elapsed"] = time.monotonic() - started
    (out / "results.json").write_text(json.dumps({**results, "raw": {"steady": steady_runs, "saturation": sat_runs}}))
    md, png = report.write(results, Path(args.results))
    log(f"wrote {md} and {png} in {results['elapsed']:.0f}s")
    for t in results["targets"]:
        log(f"  {'PASS' if t['pass'] else 'MISS'}  {t['name']}: {t['value']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
