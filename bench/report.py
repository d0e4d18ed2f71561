"""Figures, targets, bench/RESULTS.md and bench/results.png from one run's measurements."""

from __future__ import annotations

from pathlib import Path

from bench.stats import pct, summarise

PROXIES = ("gateway", "nginx")


def _ms(x: float | None) -> float | None:
    return None if x is None else x * 1000


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def _held(runs: list[dict]) -> tuple[int, int]:
    """The largest step with zero failures, and the open streams measured at it."""
    best, peak = 0, 0
    for r in runs:
        if sum(r["failures"].values()):
            break
        best, peak = r["streams"], r["peak_open"]
    return best, peak


def cost_split(runs: dict[int, dict], who: str) -> dict | None:
    """CPU per stream = fixed + per_token x lines per stream, solved from a short and a long run."""
    if len(runs) != 2:
        return None
    (short, a), (long, b) = sorted(runs.items())
    per_stream = {n: r["cpu"][who] / r["streams"] for n, r in runs.items()}
    lines = {n: r["lines"] / r["streams"] for n, r in runs.items()}
    if not a["ok"] or not b["ok"] or lines[long] <= lines[short]:
        return None
    per_token = (per_stream[long] - per_stream[short]) / (lines[long] - lines[short])
    return {
        "per_token_us": 1e6 * per_token,
        "per_stream_us": 1e6 * (per_stream[short] - per_token * lines[short]),
        "cpu_per_token_us": {n: 1e6 * per_stream[n] / lines[n] for n in runs},
        "ok": {n: r["ok"] for n, r in runs.items()},
    }


def build(args, info: dict, steady_runs: dict, sat_runs: dict, steady_hwm: dict, sat_hwm: dict, split_runs: dict | None = None) -> dict:
    steady = {t: summarise(runs) for t, runs in steady_runs.items()}
    d = steady["direct"]
    fig: dict[str, dict[str, float | None]] = {}

    def row(name: str, values: dict) -> None:
        fig[name] = values

    row("ttfb_p50_ms", {t: _ms(s["ttfb_p50"]) for t, s in steady.items()})
    row("ttfb_p99_ms", {t: _ms(s["ttfb_p99"]) for t, s in steady.items()})
    row("added_ttfb_p50_ms", {t: _ms(_sub(steady[t]["ttfb_p50"], d["ttfb_p50"])) for t in PROXIES})
    row("added_ttfb_p99_ms", {t: _ms(_sub(steady[t]["ttfb_p99"], d["ttfb_p99"])) for t in PROXIES})
    row("gap_p50_ms", {t: _ms(s["gap_p50"]) for t, s in steady.items()})
    row("gap_p99_ms", {t: _ms(s["gap_p99"]) for t, s in steady.items()})
    row("gap_p99_vs_direct_ms", {t: _ms(_sub(steady[t]["gap_p99"], d["gap_p99"])) for t in PROXIES})
    row("lat_p50_ms", {t: _ms(s["lat_p50"]) for t, s in steady.items()})
    row("lat_p99_ms", {t: _ms(s["lat_p99"]) for t, s in steady.items()})
    row("added_lat_p50_ms", {t: _ms(_sub(steady[t]["lat_p50"], d["lat_p50"])) for t in PROXIES})
    row("added_lat_p99_ms", {t: _ms(_sub(steady[t]["lat_p99"], d["lat_p99"])) for t in PROXIES})
    row("cpu_per_1k_tokens_s", {t: steady[t]["cpu_per_1k"][t] for t in PROXIES})
    row("cpu_util_pct", {t: 100 * steady[t]["cpu_util"][t] for t in PROXIES})
    row("peak_mem_steady_mb", {t: steady_hwm[t] / 1024 for t in PROXIES})
    row("peak_mem_saturation_mb", {t: sat_hwm[t] / 1024 for t in PROXIES})
    held = {t: _held(sat_runs[t]) for t in sat_runs}
    row("max_streams_held", {t: float(held[t][0]) for t in held})
    row("failures_steady", {t: float(sum(s["failures"].values())) for t, s in steady.items()})
    ratios = {k: _ratio(v.get("gateway"), v.get("nginx")) for k, v in fig.items() if "gateway" in v and "nginx" in v}

    sat_rows = []
    for t, runs in sat_runs.items():
        for r in runs:
            own = t if t in PROXIES else "upstream"
            sat_rows.append({
                "target": t, "streams": r["streams"], "ok": r["ok"], "failures": r["failures"], "peak_open": r["peak_open"],
                "ttfb_p50_ms": _ms(pct(r["ttfb"], 50)), "ttfb_p99_ms": _ms(pct(r["ttfb"], 99)),
                "gap_p99_ms": _ms(pct(r["gaps"], 99)), "lat_p99_ms": _ms(pct(r["latency"], 99)),
                "cpu_util_pct": 100 * r["cpu"][own] / r["wall"], "client_cpu_pct": 100 * r["cpu"]["client"] / r["wall"],
                "rss_mb": r["peak_rss_kb"][own] / 1024, "listen_drops": r["listen_drops"], "ramp": r.get("ramp"),
                "wall": r["wall"],
            })

    top = max(args.steps) if args.steps else 0
    g = fig
    targets = [
        {
            "name": "gateway CPU per relayed token <= 1.3 x nginx's",
            "gateway": ratios.get("cpu_per_1k_tokens_s"), "nginx": 1.0, "unit": "x nginx",
            "pass": (ratios.get("cpu_per_1k_tokens_s") or 1e9) <= 1.3,
        },
        {
            "name": f"inter-token gap p99 within 1 ms of direct ({args.streams} streams x {args.rate:g} tokens/s)",
            "gateway": g["gap_p99_vs_direct_ms"]["gateway"], "nginx": g["gap_p99_vs_direct_ms"]["nginx"], "unit": "ms",
            "pass": (g["gap_p99_vs_direct_ms"]["gateway"] if g["gap_p99_vs_direct_ms"]["gateway"] is not None else 1e9) <= 1.0,
        },
        {
            "name": "2,000 concurrent streams held with zero failures",
            "gateway": g["max_streams_held"]["gateway"], "nginx": g["max_streams_held"]["nginx"], "unit": "streams",
            "pass": g["max_streams_held"]["gateway"] >= 2000,
            "note": "" if top >= 2000 else f"top step was {top}: not measured",
        },
        {
            "name": "added time to first byte p50 <= 2 ms",
            "gateway": g["added_ttfb_p50_ms"]["gateway"], "nginx": g["added_ttfb_p50_ms"]["nginx"], "unit": "ms",
            "pass": (g["added_ttfb_p50_ms"]["gateway"] if g["added_ttfb_p50_ms"]["gateway"] is not None else 1e9) <= 2.0,
        },
    ]
    for t in targets:
        t["value"] = f"{_fmt(t['gateway'])} {t['unit']}"
    return {
        "info": info,
        "args": {k: v for k, v in vars(args).items()},
        "steady": steady,
        "figures": fig,
        "ratios": ratios,
        "saturation": sat_rows,
        "targets": targets,
        "held": held,
        "split": {t: cost_split(runs, t) for t, runs in (split_runs or {}).items()},
    }


def _fmt(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "n/a"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if 0 < abs(x) < 0.1:
        return f"{x:.2g}" if digits < 2 else f"{x:.3g}"
    return f"{x:.{digits}f}"


ROWS = [
    ("time to first byte p50 (ms)", "ttfb_p50_ms"),
    ("time to first byte p99 (ms)", "ttfb_p99_ms"),
    ("**added** time to first byte p50 (ms)", "added_ttfb_p50_ms"),
    ("**added** time to first byte p99 (ms)", "added_ttfb_p99_ms"),
    ("inter-token gap p50 (ms)", "gap_p50_ms"),
    ("inter-token gap p99 (ms)", "gap_p99_ms"),
    ("**inter-token gap p99 vs direct** (ms)", "gap_p99_vs_direct_ms"),
    ("per-token latency p50 (ms, upstream write -> client read)", "lat_p50_ms"),
    ("per-token latency p99 (ms)", "lat_p99_ms"),
    ("added per-token latency p50 (ms)", "added_lat_p50_ms"),
    ("added per-token latency p99 (ms)", "added_lat_p99_ms"),
    ("**proxy CPU seconds per 1,000 relayed tokens**", "cpu_per_1k_tokens_s"),
    ("proxy CPU, % of one core (steady phase)", "cpu_util_pct"),
    ("**peak memory (MB), steady phase**", "peak_mem_steady_mb"),
    ("**peak memory (MB), after saturation**", "peak_mem_saturation_mb"),
    ("**most concurrent streams held, no failure**", "max_streams_held"),
    ("failed streams, steady phase", "failures_steady"),
]


def markdown(res: dict) -> str:
    info, a, fig, ratios = res["info"], res["args"], res["figures"], res["ratios"]
    upstream = ("bench/upstream.py (minimal asyncio NDJSON upstream, fixed schedule)" if a["upstream"] == "bench"
                else "tests/ollama_standin.py (aiohttp stand-in)")
    variant = ""
    if a.get("gateway_uvloop") or a.get("gateway_env") or a.get("gateway_prelude") or a.get("gateway_python"):
        variant = ("**Experiment: the gateway ran with " + ", ".join(
            (["uvloop"] if a.get("gateway_uvloop") else []) + [f"`{kv}`" for kv in a.get("gateway_env", [])]
            + ([f"`{a['gateway_python']}`"] if a.get("gateway_python") else [])
            + ([f"prelude `{a['gateway_prelude']}`"] if a.get("gateway_prelude") else [])) + ".** ")
    lines = [
        "# Streaming benchmark: gateway vs nginx vs direct",
        "",
        f"Generated by `python -m bench` on {info['date']}: nproc {info['nproc']} ({info['cpu']}), Linux {info['kernel']}, "
        f"Python {info['python']}, aiohttp {info['aiohttp']}, nginx {info['nginx']}; gateway code at {info['git']}. "
        f"Load average at start {' '.join(info['loadavg_start'])}; whole run {res.get('elapsed', 0):.0f} s. "
        + variant +
        "Figures vary from run to run on a shared 2-core machine (see *Run conditions*); compare ratios within one run.",
        "",
        "## Targets",
        "",
        "| target | gateway | nginx, same run | result |",
        "|---|---|---|---|",
    ]
    for t in res["targets"]:
        note = f" ({t['note']})" if t.get("note") else ""
        lines.append(f"| {t['name']} | {_fmt(t['gateway'])} {t['unit']} | {_fmt(t['nginx'])} {t['unit']} | "
                     f"**{'PASS' if t['pass'] else 'MISS'}**{note} |")
    lines += [
        "",
        f"## Figures (steady phase: {a['streams']} concurrent streams x {a['rate']:g} tokens/s x {a['tokens']} tokens, "
        f"{a['rounds']} round{'s' if a['rounds'] != 1 else ''}; held-streams and saturation memory from the saturation phase)",
        "",
        "| figure | direct | gateway | nginx | gateway / nginx |",
        "|---|---|---|---|---|",
    ]
    for label, key in ROWS:
        v = fig[key]
        lines.append(f"| {label} | {_fmt(v.get('direct'))} | {_fmt(v.get('gateway'))} | {_fmt(v.get('nginx'))} | "
                     f"{_fmt(ratios.get(key))} |")
    st = res["steady"]
    lines += [
        "",
        f"Streams completed in the steady phase: direct {st['direct']['ok']}/{st['direct']['streams']}, "
        f"gateway {st['gateway']['ok']}/{st['gateway']['streams']}, nginx {st['nginx']['ok']}/{st['nginx']['streams']}. "
        "Ratios of the *added* figures divide two small differences and swing widely; the absolute columns are steadier.",
        "",
        f"## Saturation ({a['sat_rate']:g} tokens/s x {a['sat_tokens']} tokens per stream, streams started at "
        f"{a['sat_conn_rate']:g}/s; a target stops at its first step with a failure)",
        "",
        "| streams | target | ok | failures | peak open | TTFB p50 (ms) | TTFB p99 (ms) | gap p99 (ms) | token latency p99 (ms) "
        "| proxy CPU (% core) | proxy peak RSS (MB) | client CPU (% core) | SYNs dropped |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(res["saturation"], key=lambda r: (r["streams"], r["target"])):
        fails = ", ".join(f"{k}: {v}" for k, v in r["failures"].items()) or "0"
        own = "(upstream) " if r["target"] == "direct" else ""
        lines.append(
            f"| {r['streams']} | {r['target']} | {r['ok']} | {fails} | {r['peak_open']} | {_fmt(r['ttfb_p50_ms'])} | "
            f"{_fmt(r['ttfb_p99_ms'])} | {_fmt(r['gap_p99_ms'])} | {_fmt(r['lat_p99_ms'])} | {own}{_fmt(r['cpu_util_pct'], 0)} | "
            f"{own}{_fmt(r['rss_mb'], 1)} | {_fmt(r['client_cpu_pct'], 0)} | {r['listen_drops'].get('ListenOverflows', 0)} |"
        )
    split = res.get("split") or {}
    if split.get("gateway") and split.get("nginx"):
        g, n = split["gateway"], split["nginx"]
        short, long = sorted(g["cpu_per_token_us"])
        lines += [
            "", f"## Where the CPU goes: per stream and per token ({a['streams']} streams of {short} and of {long} tokens, "
            "one run each)", "",
            "CPU per stream is a fixed part (accept, parse, route, check, log, close: once per request) plus a part per "
            "relayed token; the two lengths give both. CPU per token at any stream length L is "
            "per token + per stream / L.", "",
            "| figure | gateway | nginx | gateway / nginx |",
            "|---|---|---|---|",
            f"| CPU per relayed token, marginal (µs) | {_fmt(g['per_token_us'], 1)} | {_fmt(n['per_token_us'], 1)} | "
            f"{_fmt(_ratio(g['per_token_us'], n['per_token_us']))} |",
            f"| CPU per stream, fixed part (µs) | {_fmt(g['per_stream_us'], 0)} | {_fmt(n['per_stream_us'], 0)} | "
            f"{_fmt(_ratio(g['per_stream_us'], n['per_stream_us']))} |",
        ]
        for length in (short, long):
            lines.append(f"| CPU per token, streams of {length} tokens (µs, measured) | {_fmt(g['cpu_per_token_us'][length], 1)} | "
                         f"{_fmt(n['cpu_per_token_us'][length], 1)} | "
                         f"{_fmt(_ratio(g['cpu_per_token_us'][length], n['cpu_per_token_us'][length]))} |")
        k = res.get("split_keys")
        if k:  # the same split through a gateway with a named key, a policy and token accounting
            lines += [
                "", "The same split through a gateway that checks a named key, applies its policy (an allowlist, limits) "
                "and counts its tokens (a separate gateway process in the same run):", "",
                "| figure | gateway | gateway with keys | keys / none |", "|---|---|---|---|",
                f"| CPU per relayed token, marginal (µs) | {_fmt(g['per_token_us'], 1)} | {_fmt(k['per_token_us'], 1)} | "
                f"{_fmt(_ratio(k['per_token_us'], g['per_token_us']))} |",
                f"| CPU per stream, fixed part (µs) | {_fmt(g['per_stream_us'], 0)} | {_fmt(k['per_stream_us'], 0)} | "
                f"{_fmt(_ratio(k['per_stream_us'], g['per_stream_us']))} |",
            ]
            for length in (short, long):
                lines.append(f"| CPU per token, streams of {length} tokens (µs, measured) | {_fmt(g['cpu_per_token_us'][length], 1)} | "
                             f"{_fmt(k['cpu_per_token_us'][length], 1)} | "
                             f"{_fmt(_ratio(k['cpu_per_token_us'][length], g['cpu_per_token_us'][length]))} |")
    base = res.get("baseline")
    if base and split.get("gateway"):
        g, k = split["gateway"], res.get("split_keys")
        short, long = sorted(g["cpu_per_token_us"])
        lines += [
            "", f"## Before and after, in this run: the gateway at {base['commit']} (baseline) and this one", "",
            f"The same cost split through the gateway of the baseline checkout (`--baseline {base['dir']}`), each right after "
            "this gateway's run of the same length, plain and with a named key, a policy and token accounting:", "",
            "| figure | baseline | this gateway | this / baseline | baseline, keys | this, keys | this / baseline, keys |",
            "|---|---|---|---|---|---|---|",
        ]
        rows = [("CPU per relayed token, marginal (µs)", "per_token_us", None, 1), ("CPU per stream, fixed part (µs)", "per_stream_us", None, 0)]
        rows += [(f"CPU per token, streams of {n} tokens (µs, measured)", "cpu_per_token_us", n, 1) for n in (short, long)]
        for label, field, length, digits in rows:
            def value(split_of: dict | None) -> float | None:
                if not split_of:
                    return None
                return split_of[field][length] if length is not None else split_of[field]
            b, t, bk, tk = value(base.get("plain")), value(g), value(base.get("keys")), value(k)
            lines.append(f"| {label} | {_fmt(b, digits)} | {_fmt(t, digits)} | {_fmt(_ratio(t, b))} | {_fmt(bk, digits)} | "
                         f"{_fmt(tk, digits)} | {_fmt(_ratio(tk, bk))} |")
    lines += ["", "## Run conditions (steady phase)", "",
              "| target | client CPU (% of one core) | client CPU s per 1,000 tokens | upstream CPU (% of one core) "
              "| other processes' CPU / hypervisor steal (% of one core) | client event-loop lag max (ms) "
              "| gap p99 per round (ms) | TTFB p50 per round (ms) |",
              "|---|---|---|---|---|---|---|---|"]
    for t, s in st.items():
        rounds_gap = ", ".join(_fmt(_ms(x), 1) for x in s["per_round"]["gap_p99"])
        rounds_ttfb = ", ".join(_fmt(_ms(x), 2) for x in s["per_round"]["ttfb_p50"])
        lines.append(f"| {t} | {100 * s['cpu_util']['client']:.0f} | {s['cpu_per_1k']['client']:.3f} | "
                     f"{100 * s['cpu_util']['upstream']:.0f} | {100 * s['background_util']:.0f} / {100 * s['steal_util']:.0f} | "
                     f"{_fmt(_ms(s['client_lag_max']), 1)} | {rounds_gap} | {rounds_ttfb} |")
    q = res.get("quiet", {})
    if q:
        redone = q.get("discarded", [])
        lines += ["", f"Runs measured again because other processes and hypervisor steal took more than "
                  f"{100 * q['threshold']:.0f}% of a core "
                  f"meanwhile: {len(redone)}" + (f" ({', '.join(d['run'] for d in redone)})" if redone else "")
                  + f"; waited {q.get('waited', 0):.0f} s in all for a quiet machine."]
    prof = res.get("profile") or {}
    titles = {"steady": "cost per token: the steady load", "churn": "cost per request: many short streams started fast"}
    for name, p in prof.items():
        if not p.get("samples"):
            continue
        lines += ["", f"## Gateway profile, {titles.get(name, name)} (py-spy, {p['load']}, {p['samples']} on-CPU samples)", "",
                  "| leaf (self) time by area | % | hottest functions, self time | % | inclusive time (project and aiohttp) | % |",
                  "|---|---|---|---|---|---|"]
        incl = [(k, v) for k, v in p["inclusive"]
                if not k.startswith(("<module>", "_run_module", "_run_code", "run_app", "BaseEventLoop.run", "main (", "Handle._run",
                                     "BaseEventLoop._run_once"))]
        for i in range(12):
            cells = []
            for col in (p["areas"], p["self"], incl):
                cells += [f"`{col[i][0]}`", f"{col[i][1]}"] if i < len(col) else ["", ""]
            lines.append("| " + " | ".join(cells) + " |")
    if prof:
        lines += ["", "Raw collapsed stacks: `bench/out/gateway-profile-*.txt` (feed them to any flame-graph tool). "
                  "Time inside a socket call (`send`, `recv`, `epoll_wait`) shows as self time of the asyncio function "
                  "that makes it."]
    lines += [
        "",
        "## How it was measured",
        "",
        f"- **Upstream**: {upstream}. " + (
            "Each stream's line *i* is written at start + i/rate; one chunk per line, HTTP/1.1 keep-alive, chunked, "
            "`created_at` = the real write time." if a["upstream"] == "bench" else
            "One `asyncio.sleep(1/rate)` before each line (the rate drifts below nominal under load); its `created_at` "
            "is fixed, so there is no per-token latency."),
        "- **Gateway**: `python -m proxy --port P` with `OLLAMA_HOST=127.0.0.1:<upstream>` (local mode, one process, "
        "in-process relay, aiohttp).",
        "- **nginx**: `worker_processes 1` (comparable to the single-process gateway; nginx would scale across cores "
        "with more workers), `master_process on`, `daemon off`, run as root, `proxy_buffering off`, HTTP/1.1 upstream "
        "keep-alive (`keepalive` = the largest concurrency), `/ollama/` -> upstream `/`. Its CPU and memory are the master's "
        "plus the worker's.",
        "- **Load**: a separate load-generator process (raw asyncio protocol, one new connection per stream, "
        "`Connection: close`), streams started evenly over the ramp; before each steady run a warm-up with the same "
        "concurrency fills the proxies' upstream pools. Direct, gateway and nginx are driven with the same schedule, one "
        "at a time, the order rotated each round; all servers run throughout.",
        "- **Time to first byte**: request start (before connect) to the first NDJSON line; *added* = proxy p50/p99 "
        "minus direct p50/p99. **Inter-token gap**: time between successive lines at the client. **Per-token latency**: "
        "client receive time minus the upstream's `created_at`. Each percentile is taken per round, and the table shows "
        "the median over the rounds.",
        "- **Quiet machine**: before each run the bench waits (briefly) until processes outside the benchmark and the "
        "hypervisor's steal take little CPU, and measures a run again (at most twice) if they took more than the "
        "threshold meanwhile. What remains is shown under *Run conditions*.",
        "- **CPU**: utime+stime from `/proc/<pid>/stat` before and after each measured run (10 ms ticks), divided by "
        "the NDJSON lines the client received. **Peak memory**: `VmHWM` from `/proc/<pid>/status` (nginx: master + "
        "worker summed), read when each phase's servers stop.",
        "- **Held**: every stream of a step got status 200, all its lines and the final `\"done\":true` line within "
        "its deadline. SYNs dropped = the kernel's ListenOverflows during the run (gateway: aiohttp's default listen "
        "backlog was 128; the gateway now asks for 4096; nginx's is 511).",
        "- Client, upstream and proxy share the machine's cores, so every figure includes some CPU contention; the "
        "client's own CPU is reported above.",
        "",
        "![results](results.png)",
        "",
    ]
    if res.get("idle"):  # bench/idle.py: what wakes the GPU
        from bench.idle import render as render_idle

        lines += [""] + render_idle(res["idle"]) + [""]
    soak = Path(__file__).with_name("SOAK.md")
    if soak.exists():  # bench/soak.py: memory after tens of thousands of abandoned streams
        lines += ["", soak.read_text().strip().replace("# Soak:", "## Soak:", 1), ""]
    history = Path(__file__).with_name("HISTORY.md")
    if history.exists():  # the hand-written record of profiling and fixes, before and after
        lines += ["", history.read_text().strip(), ""]
    return "\n".join(lines)


def chart(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_ = res["figures"]
    colors = {"direct": "#999999", "gateway": "#1f77b4", "nginx": "#2ca02c"}
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    a = res["args"]
    fig.suptitle(f"Streaming benchmark: {a['streams']} streams x {a['rate']:g} tokens/s "
                 f"({res['info']['nproc']} cores, {res['info']['date']})")

    def bars(ax, keys_labels, targets, title, ylabel, target_line=None, target_label=None):
        width = 0.8 / len(targets)
        for i, t in enumerate(targets):
            vals = [fig_[k].get(t) or 0 for k, _ in keys_labels]
            xs = [j + (i - (len(targets) - 1) / 2) * width for j in range(len(keys_labels))]
            ax.bar(xs, vals, width, label=t, color=colors[t])
            for x, v in zip(xs, vals):
                ax.annotate(_fmt(v), (x, v), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(keys_labels)))
        ax.set_xticklabels([label for _, label in keys_labels])
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        if target_line is not None:
            ax.axhline(target_line, color="red", linestyle="--", linewidth=1, label=target_label)
        ax.legend(fontsize=8)

    bars(axes[0][0], [("added_ttfb_p50_ms", "p50"), ("added_ttfb_p99_ms", "p99")], PROXIES,
         "Added time to first byte vs direct", "ms", 2.0, "target p50 <= 2 ms")
    bars(axes[0][1], [("gap_p99_vs_direct_ms", "gap p99"), ("added_lat_p50_ms", "token latency p50"),
                      ("added_lat_p99_ms", "token latency p99")], PROXIES,
         f"Per-token delay added vs direct (direct gap p99 {_fmt(fig_['gap_p99_ms']['direct'])} ms)", "ms",
         1.0, "target: gap p99 <= direct + 1 ms")
    bars(axes[0][2], [("cpu_per_1k_tokens_s", "CPU s / 1,000 tokens")], PROXIES, "Proxy CPU per relayed token", "CPU seconds",
         1.3 * (fig_["cpu_per_1k_tokens_s"]["nginx"] or 0), "target: 1.3 x nginx")
    bars(axes[1][0], [("peak_mem_steady_mb", "steady"), ("peak_mem_saturation_mb", "after saturation")], PROXIES,
         "Peak memory (VmHWM)", "MB")

    ax = axes[1][1]
    for t in ("direct", "gateway", "nginx"):
        rows = sorted((r for r in res["saturation"] if r["target"] == t), key=lambda r: r["streams"])
        if not rows:
            continue
        ax.plot([r["streams"] for r in rows], [r["ttfb_p99_ms"] or 0 for r in rows], "o-", color=colors[t], label=f"{t} TTFB p99")
        ax.plot([r["streams"] for r in rows], [r["lat_p99_ms"] or 0 for r in rows], "s:", color=colors[t],
                label=f"{t} token latency p99")
        for r in rows:
            if sum(r["failures"].values()):
                ax.plot([r["streams"]], [r["ttfb_p99_ms"] or 0], "x", color="red", markersize=12)
    ax.set_title(f"Saturation ({a['sat_rate']:g} tokens/s per stream; x = failures)")
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("ms")
    ax.set_yscale("log")
    ax.legend(fontsize=7)

    ax = axes[1][2]
    for t in PROXIES:
        rows = sorted((r for r in res["saturation"] if r["target"] == t), key=lambda r: r["streams"])
        ax.plot([r["streams"] for r in rows], [r["cpu_util_pct"] for r in rows], "o-", color=colors[t], label=f"{t} CPU % of a core")
        ax.plot([r["streams"] for r in rows], [r["rss_mb"] for r in rows], "s:", color=colors[t], label=f"{t} peak RSS MB")
    ax.set_title("Proxy CPU and memory by concurrency")
    ax.set_xlabel("concurrent streams")
    ax.legend(fontsize=7)

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(res: dict, where: Path) -> tuple[Path, Path]:
    where.mkdir(parents=True, exist_ok=True)
    md, png = where / "RESULTS.md", where / "results.png"
    md.write_text(markdown(res))
    chart(res, png)
    return md, png
