"""Header rules for both directions. Pure functions over (name, value) lists."""

from __future__ import annotations

from collections.abc import Iterable

from backend.wire import Headers

# RFC 9110 section 7.6.1 plus the legacy Proxy-Connection: meaningful for one hop only.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)

# Never sent upstream: Host is Ollama's own (the relay sets it), a browser's Origin makes
# Ollama answer 403, Content-Length is recomputed from the body we send, Expect was
# already answered (the gateway has the whole body), and the gateway's credentials
# (keys, Modal proxy auth, cookies) are the gateway's business alone.
NOT_FORWARDED_UPSTREAM = frozenset(
    {"host", "origin", "content-length", "expect", "authorization", "x-api-key", "modal-key", "modal-secret", "cookie"}
)

# Set by the gateway's own server: aiohttp frames the body it writes (with Ollama's
# length when Ollama gave one, see `body_length`).
NOT_RETURNED = frozenset({"content-length", "date", "server"})


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    """Header names listed in `Connection`, which are hop-by-hop too."""
    return {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
        if token.strip()
    }


def _without(headers: Iterable[tuple[str, str]], drop: frozenset[str]) -> Headers:
    headers = list(headers)
    dropped = drop | HOP_BY_HOP | _connection_tokens(headers)
    return [(name, value) for name, value in headers if name.lower() not in dropped]


def upstream_request_headers(headers: Iterable[tuple[str, str]]) -> Headers:
    """The client's headers as Ollama should see them."""
    return _without(headers, NOT_FORWARDED_UPSTREAM)


def client_response_headers(headers: Iterable[tuple[str, str]]) -> Headers:
    """Ollama's response headers as the client should see them."""
    return _without(headers, NOT_RETURNED)


def body_length(headers: Iterable[tuple[str, str]]) -> int | None:
    """The length Ollama declared for its response body, if the body is delimited by it
    (a Content-Length and no Transfer-Encoding); None for chunked or unknown lengths."""
    length = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == "transfer-encoding":
            return None
        if lowered == "content-length":
            value = value.strip()
            if not (value.isascii() and value.isdigit()) or (length is not None and int(value) != length):
                return None
            length = int(value)
    return length
