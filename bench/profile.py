"""Hot functions of the gateway, from a py-spy `--format raw` (collapsed stacks) record."""

from __future__ import annotations

import re
import shutil
import sys
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def pyspy_binary() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _short(file: str) -> str:
    for marker in ("site-packages/", "lib/python3.", "/work/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            if marker == "lib/python3.":
                file = "stdlib/" + file.split("/", 1)[-1]
            break
    return file


def _key(frame: str) -> str:
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    return f"{m['func']} ({_short(m['file'])})"


def summarise(raw: Path, top: int = 20) -> dict:
    """Self and inclusive sample shares per function, and per module area."""
    self_ = Counter()
    incl = Counter()
    area = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        keys = [_key(f) for f in frames]
        self_[keys[-1]] += n
        for k in set(keys):
            incl[k] += n
        area[_area(keys[-1])] += n
    if not total:
        return {"samples": 0, "self": [], "inclusive": [], "areas": []}

    def share(c: Counter, limit: int) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in c.most_common(limit)]

    return {"samples": total, "self": share(self_, top), "inclusive": share(incl, top + 15), "areas": share(area, 12)}


def _area(key: str) -> str:
    """Which part of the code a leaf frame belongs to."""
    file = key[key.rfind("(") + 1 : -1]
    if file.startswith(("proxy/", "backend/")):
        return file.split(":")[0]
    if file.startswith("aiohttp/"):
        return "aiohttp/" + file.split("/")[1].split(":")[0]
    if file.startswith("stdlib/asyncio/"):
        return "asyncio/" + file.split("/")[2].split(":")[0]
    if file.startswith("stdlib/"):
        return "stdlib (other)"
    return file.split("/")[0]


if __name__ == "__main__":
    import json

    print(json.dumps(summarise(Path(sys.argv[1])), indent=1))
