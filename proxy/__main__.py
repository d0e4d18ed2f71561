"""`python -m proxy`: the gateway on a laptop, in front of a local Ollama."""

from __future__ import annotations

import argparse
import logging
import sys

from aiohttp import web

# What local mode reads from the environment (or from garden.env), for --help.
ENVIRONMENT_HELP = (
    ("OLLAMA_HOST", "the Ollama to use (default 127.0.0.1:11434); started if it is not running"),
    ("GATEWAY_PORT", "port to listen on when --port is not given (default 8000)"),
    ("GATEWAY_API_KEYS", "API keys, name:key,name:key (required with a --host other than loopback)"),
    ("GATEWAY_KEY_POLICY", "per key name: the models it may use and its limits (JSON)"),
    ("GATEWAY_ALLOW_OPEN", "1: serve a --host other than loopback without keys, on purpose"),
    ("GATEWAY_CORS_ORIGINS", "browser origins allowed to call (default *)"),
    ("GATEWAY_READ_ONLY", "true: serve only reading and inference"),
    ("GATEWAY_MAX_BODY_MB", "largest request body (default 100)"),
    ("GATEWAY_BODY_TIMEOUT_S", "longest time to receive a request body (default 60)"),
    ("GATEWAY_EARLY_HEAD_S", "seconds before a waiting stream gets its head from the gateway (default 5)"),
    ("OLLAMA_TIMEOUT", "longest wait for Ollama's answer, in seconds (default 1800)"),
    ("GATEWAY_USAGE_FILE", "a file that keeps tokens and budgets across restarts (default: memory)"),
    ("GARDEN_SETTINGS_FILE", "a settings file to read instead of garden.env next to config.py"),
)


def help_epilog() -> str:
    width = max(len(name) for name, _ in ENVIRONMENT_HELP)
    rows = "\n".join(f"  {name:<{width}}  {meaning}" for name, meaning in ENVIRONMENT_HELP)
    return f"environment variables (also read from garden.env; the environment wins):\n{rows}"


def port_number(raw: str) -> int:
    """argparse type for --port: a clear one-line error instead of an OverflowError later."""
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a port number from 1 to 65535")
    return int(raw)


def stopping_message(open_requests: int) -> str:
    """What the first Ctrl-C prints."""
    if not open_requests:
        return "stopping"
    streams = "1 open stream" if open_requests == 1 else f"{open_requests} open streams"
    return f"stopping: waiting for {streams} to end (press Ctrl-C again to stop now)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m proxy",
        description="personal-model-garden gateway, local mode: Ollama's API under /ollama",
        epilog=help_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 serves your network and needs keys)")
    parser.add_argument("--port", type=port_number, default=None, help="port to listen on (default: GATEWAY_PORT or 8000)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        from config import network_refusal, settings
    except ValueError as exc:  # config.ConfigError: a bad setting in the environment
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    from proxy.app import create_app
    from proxy.auth import is_loopback_name
    from proxy.local import banner_lines, find_ollama
    from proxy.server import ListenError, run_forever, settle_heap

    loopback = is_loopback_name(args.host)
    refusal = network_refusal(settings, args.host, loopback)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    port = args.port or settings.gateway_port
    local = find_ollama(settings.ollama_url)
    # Bound to loopback, refuse other Host names (DNS rebinding), as Ollama does.
    app = create_app(local.backend, settings, loopback_only=loopback, local=local.report)

    async def stop_ollama(app: web.Application) -> None:
        local.stop()

    app.on_cleanup.append(stop_ollama)

    def banner() -> None:  # once the socket is bound
        settle_heap()
        for line in banner_lines(args.host, port, local.description):
            print(line, flush=True)

    def stopping(open_requests: int) -> None:
        print(stopping_message(open_requests), file=sys.stderr, flush=True)

    try:
        run_forever(app, args.host, port, banner, stopping)
    except ListenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        local.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
