"""`python -m proxy`: the gateway on a laptop, in front of a local Ollama."""

from __future__ import annotations

import argparse
import logging
import sys

from aiohttp import web


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proxy", description="personal-model-garden gateway, local mode")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port to listen on (default: GATEWAY_PORT or 8000)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        from config import settings
    except ValueError as exc:  # config.ConfigError: a bad setting in the environment
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    from proxy.app import create_app
    from proxy.auth import is_loopback_name
    from proxy.local import find_ollama
    from proxy.server import run_forever, settle_heap

    port = args.port or settings.gateway_port
    local = find_ollama(settings.ollama_url)
    # Bound to loopback, refuse other Host names (DNS rebinding), as Ollama does.
    app = create_app(local.backend, settings, loopback_only=is_loopback_name(args.host), local=local.report)

    async def stop_ollama(app: web.Application) -> None:
        local.stop()

    app.on_cleanup.append(stop_ollama)

    def banner() -> None:  # once the socket is bound
        settle_heap()
        print(f"gateway listening on http://{args.host}:{port}  (Ollama API under /ollama)", flush=True)
        print(f"ollama: {local.description}", flush=True)

    try:
        run_forever(app, args.host, port, banner)
    finally:
        local.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
