"""Helpers to put a fake `ollama` executable on PATH that serves the stand-in."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def write_fake_ollama(bin_dir: Path, behaviour: str = "serve") -> Path:
    """An `ollama` script: `serve` runs the stand-in on OLLAMA_HOST; `exit` fails at once;
    `hang` never answers. Uses this interpreter so it finds aiohttp."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "ollama"
    body = {
        "serve": f"import sys; sys.path.insert(0, {str(REPO)!r}); from tests.ollama_standin import main; sys.argv = sys.argv[:1]; main()",
        "exit": "import sys; print('ollama: cannot start', file=sys.stderr); sys.exit(3)",
        "hang": "import time; time.sleep(600)",
    }[behaviour]
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "if sys.argv[1:] != ['serve']:\n"
        "    sys.exit(f'fake ollama: unexpected arguments {sys.argv[1:]}')\n"
        f"{body}\n"
    )
    script.chmod(0o755)
    return script


def env_with_path(bin_dir: Path | None, **extra: str) -> dict[str, str]:
    """The environment for a child process, with only `bin_dir` and system dirs on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "GATEWAY_"))}
    system = "/usr/local/bin:/usr/bin:/bin"
    env["PATH"] = f"{bin_dir}:{system}" if bin_dir else system
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    env["GARDEN_SETTINGS_FILE"] = os.devnull  # never the developer's own garden.env
    env.update(extra)
    return env


class AlreadyRunning:
    """Stands for `ollama serve` when the stand-in is already listening."""

    def __init__(self) -> None:
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def wait_ready(self, timeout: float) -> float:
        return 0.01

    def stop(self) -> None:
        self.stopped = True
