"""Errors the gateway writes itself, in the shape the client's API family expects."""

from __future__ import annotations

import json

from aiohttp import web

_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 413: "invalid_request_error", 429: "requests"}
_OPENAI_CODES = {429: "rate_limit_exceeded"}


def error_body(status: int, message: str, family: str) -> dict:
    """Ollama: `{"error": "..."}`. OpenAI: `{"error": {"message", "type", "param", "code"}}`."""
    if family == "openai":
        kind = _OPENAI_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
        return {"error": {"message": message, "type": kind, "param": None, "code": _OPENAI_CODES.get(status)}}
    return {"error": message}


def error_response(status: int, message: str, family: str = "ollama", headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(error_body(status, message, family)).encode(),
        content_type="application/json",
        headers=headers,
    )


def keepalive_bytes(content_type: str) -> bytes:
    """Bytes every reader of a stream of this type skips, sent while it waits.

    SSE: a comment line (openai-python, openai-node and browsers' EventSource ignore
    it). NDJSON: one space, never a newline: ollama-python and Ollama's Go client parse
    every line, and an empty one fails them; leading spaces before the first line are
    skipped by every JSON parser (ollama-python, ollama-js, `JSON.parse` in a browser).
    """
    return b": keep-alive\n\n" if content_type.split(";")[0].strip().lower() == "text/event-stream" else b" "


def stream_error_tail(content_type: str, message: str, last_bytes: bytes, status: int = 502) -> bytes:
    """The last bytes to send when a stream breaks after its head went out.

    Mirrors Ollama: NDJSON ends with an `{"error": ...}` line, SSE with an error event.
    `last_bytes` (the end of what was sent) decides how to close a half-sent line or
    event first. Other bodies cannot carry an error in band: b"" (the caller cuts them short).
    """
    content_type = content_type.split(";")[0].strip().lower()
    if content_type == "application/x-ndjson":
        separator = b"" if not last_bytes or last_bytes.endswith(b"\n") else b"\n"
        return separator + json.dumps({"error": message}).encode() + b"\n"
    if content_type == "text/event-stream":
        if not last_bytes or last_bytes.endswith(b"\n\n"):
            separator = b""
        else:
            separator = b"\n" if last_bytes.endswith(b"\n") else b"\n\n"
        return separator + b"data: " + json.dumps(error_body(status, message, "openai")).encode() + b"\n\n"
    return b""
