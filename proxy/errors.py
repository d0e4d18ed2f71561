"""Errors the gateway writes itself, in the shape the client's API family expects."""

from __future__ import annotations

import json

from aiohttp import web

_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 413: "invalid_request_error"}


def error_body(status: int, message: str, family: str) -> dict:
    """Ollama: `{"error": "..."}`. OpenAI: `{"error": {"message", "type", "param", "code"}}`."""
    if family == "openai":
        kind = _OPENAI_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return {"error": message}


def error_response(status: int, message: str, family: str = "ollama", headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(error_body(status, message, family)).encode(),
        content_type="application/json",
        headers=headers,
    )


def stream_error_tail(content_type: str, message: str, last_bytes: bytes) -> bytes:
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
        return separator + b"data: " + json.dumps(error_body(502, message, "openai")).encode() + b"\n\n"
    return b""
