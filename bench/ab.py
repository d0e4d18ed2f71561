"""Before and after a change, repeated: `python -m bench.ab --baseline DIR`.

The cost split of `python -m bench --baseline DIR` is one run per length, and one run
moves by ±10 % on this machine. This runs the same loads (200 streams of 4 and of 400
tokens through local mode, the bench upstream) through this checkout's gateway and the
baseline's, alternating which goes first, `--reps` times, and reports the medians of the
gateway's CPU per stream. Prints a Markdown section (RESULTS.md keeps the last one).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench.run import run_load
from bench.stack import REPO, Stack

LENGTHS = (4, 400)
STREAMS = 200
RATE = 50.0


def commit(checkout: Path | str) -> str:
    return subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "?"


def measure(baseline: str, reps: int) -> dict[str, dict[int, list[float]]]:
    out = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    cpu: dict[str, dict[int, list[float]]] = {"this": {}, "baseline": {}}
    with Stack("bench", RATE, max(LENGTHS), out, "ab-this") as this, Stack("bench", RATE, max(LENGTHS), out, "ab-baseline", gateway_cwd=baseline) as base:
        for rep in range(reps):
            order = (("this", this), ("baseline", base)) if rep % 2 == 0 else (("baseline", base), ("this", this))
            for name, stack in order:
                for tokens in LENGTHS:
                    res = run_load(stack, "gateway", STREAMS, tokens, 0.5, 2 * tokens / RATE + 5, 27, out / f"{name}-{tokens}-{rep}", 1)
                    cpu[name].setdefault(tokens, []).append(1e6 * res["cpu"]["gateway"] / res["streams"])
    return cpu


def markdown(cpu: dict[str, dict[int, list[float]]], baseline: str, reps: int) -> str:
    lines = [
        f"## Before and after, repeated: the gateway at {commit(baseline)} (baseline) and at {commit(REPO)}", "",
        f"`python -m bench.ab --baseline {baseline}`: {STREAMS} streams of each length through each gateway (local mode), "
        f"{reps} times, alternating which goes first; the gateway's CPU per stream (µs; /proc counts in 10 ms ticks, "
        f"so one run's figure is a multiple of {10_000 // STREAMS} µs).", "",
        "| stream length | baseline, median | this, median | this / baseline | baseline, each run | this, each run |",
        "|---|---|---|---|---|---|",
    ]
    for tokens in LENGTHS:
        b, t = statistics.median(cpu["baseline"][tokens]), statistics.median(cpu["this"][tokens])
        each = lambda runs: ", ".join(f"{x:.0f}" for x in runs)  # noqa: E731
        lines.append(f"| {tokens} tokens | {b:.0f} | {t:.0f} | {t / b:.3f} | {each(cpu['baseline'][tokens])} | {each(cpu['this'][tokens])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, metavar="DIR", help="another checkout (`git worktree add DIR <rev>`)")
    parser.add_argument("--reps", type=int, default=6)
    args = parser.parse_args()
    print(markdown(measure(args.baseline, args.reps), args.baseline, args.reps))


if __name__ == "__main__":
    main()
