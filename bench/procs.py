"""Processes the benchmark starts, and what /proc says about them."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterable

CLK_TCK = os.sysconf("SC_CLK_TCK")


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise this process's open-file limit; children started afterwards inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (max(wanted, hard), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
            return target
        except (ValueError, OSError):
            continue
    return soft


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        raw = f.read()
    return raw[raw.rindex(")") + 2 :].split()  # fields from 3 (state) on; comm may hold spaces


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime (all threads) of each process, summed."""
    total = 0.0
    for pid in pids:
        try:
            f = _stat_fields(pid)
        except OSError:
            continue
        total += (int(f[11]) + int(f[12])) / CLK_TCK  # fields 14 and 15
    return total


def system_cpu() -> dict[str, float]:
    """Machine-wide CPU seconds from /proc/stat: busy (all cores) and steal."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    return {"busy": (user + nice + system + irq + softirq) / CLK_TCK, "steal": steal / CLK_TCK}


def children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if int(_stat_fields(int(name))[1]) == pid:
                    found.append(int(name))
            except (OSError, ValueError, IndexError):
                continue
    return found


def status_kb(pid: int, field: str) -> int:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM), 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def listen_drops() -> dict[str, int]:
    """TcpExt ListenOverflows/ListenDrops: SYNs a full accept queue turned away."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            pairs = dict(zip(names.split()[1:], (int(v) for v in values.split()[1:])))
            return {k: pairs.get(k, 0) for k in ("ListenOverflows", "ListenDrops")}
    return {}


def wait_http(url: str, proc: subprocess.Popen, timeout: float, expect: bytes = b"", headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=1) as r:  # loopback only
                if expect in r.read():
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"nothing answered {url} within {timeout:.0f}s ({last})")


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
    """Stop one process we started, by its pid: a signal, then SIGKILL after `grace`."""
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    except ProcessLookupError:
        pass


def kill_pids(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Started:
    """A context manager over `start()` and `stop()`: what was started is stopped, even
    when `start()` fails half-way."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self):  # noqa: ANN204 (the subclass)
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
