"""Path rules: which gateway paths are forwarded, and where they land on Ollama."""

from __future__ import annotations

import re

from backend.routes import path_segments

PREFIX = "/ollama"


def upstream_path(raw_path: str, raw_query: str = "") -> str | None:
    """Map a gateway path (still percent-encoded) to an origin-form path on Ollama.

    `/ollama/api/tags` -> `/api/tags`; `/ollama` and `/ollama/` -> `/`. Returns None for
    paths outside the prefix (`/ollamax`). The result always starts with exactly one
    `/` and holds no dot segments, so no upstream can read it as another host
    (`//host/x`) or climb out of its root; the query string is kept as sent.
    """
    if raw_path != PREFIX and not raw_path.startswith(PREFIX + "/"):
        return None
    segments = path_segments(raw_path[len(PREFIX) :])
    path = "/" + "/".join(segments)
    if raw_path.endswith("/") and segments:
        path += "/"
    return f"{path}?{raw_query}" if raw_query else path


def route_api_family(route: str) -> str:
    """`anthropic` for Ollama's Anthropic-compatible `/v1/messages` (and below it),
    `openai` for its other `/v1` routes, `ollama` for the rest, from a route decoded by
    `route_of`. Decides the shape of errors the gateway writes itself."""
    if route == "/v1/messages" or route.startswith("/v1/messages/"):
        return "anthropic"
    return "openai" if route == "/v1" or route.startswith("/v1/") else "ollama"


_OLLAMA_ROUTE = re.compile(r"/(api|v1)/[A-Za-z0-9/._:-]{1,100}")


def not_found_hint(route: str) -> str:
    """What a request outside /ollama is told (the likeliest first mistake: a client
    pointed at the bare URL), from a route decoded by `route_of`. `/api/chat` is shown
    where it belongs; anything else gets the general hint, never an echo of its path."""
    example = PREFIX + route if _OLLAMA_ROUTE.fullmatch(route) else PREFIX + "/api/chat"
    return f"not found: Ollama's API is under {PREFIX}/, e.g. {example}"
