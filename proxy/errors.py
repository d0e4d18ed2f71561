"""Errors the gateway writes itself, in the shape the client's API family expects."""

from __future__ import annotations

import json

from aiohttp import web

_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 413: "invalid_request_error", 429: "requests"}
_OPENAI_CODES = {429: "rate_limit_exceeded"}
# Anthropic's error types (its API reference), as Ollama's anthropic.NewError maps them;
# 413 and 504 are Anthropic's own (Ollama never answers them itself).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error",
}  # fmt: skip

# The streams whose in-band form is their API's own, by the route Ollama serves them on.
ANTHROPIC_STREAM = "/v1/messages"
RESPONSES_STREAM = "/v1/responses"


def error_body(status: int, message: str, family: str) -> dict:
    """Ollama: `{"error": "..."}`. OpenAI: `{"error": {"message", "type", "param", "code"}}`.
    Anthropic: `{"type": "error", "error": {"type", "message"}}`."""
    if family == "openai":
        kind = _OPENAI_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
        return {"error": {"message": message, "type": kind, "param": None, "code": _OPENAI_CODES.get(status)}}
    if family == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": message}


def error_response(status: int, message: str, family: str = "ollama", headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(error_body(status, message, family)).encode(),
        content_type="application/json",
        headers=headers,
    )


def keepalive_bytes(content_type: str, route: str = "") -> bytes:
    """Bytes every reader of a stream of this type (on this route) skips, sent while it waits.

    SSE: a comment line (openai-python, openai-node, Codex and browsers' EventSource
    ignore it); on Anthropic's `/v1/messages`, Anthropic's own `ping` event, which its
    SDKs and Claude Code skip by name. NDJSON: one space, never a newline: ollama-python
    and Ollama's Go client parse every line, and an empty one fails them; leading spaces
    before the first line are skipped by every JSON parser (ollama-python, ollama-js,
    `JSON.parse` in a browser).
    """
    if content_type.split(";")[0].strip().lower() != "text/event-stream":
        return b" "
    return b'event: ping\ndata: {"type": "ping"}\n\n' if route == ANTHROPIC_STREAM else b": keep-alive\n\n"


def _sse_error_event(route: str, message: str, status: int) -> bytes:
    """One SSE event that makes each client of the route's API raise with `message`.

    `/v1/messages`: Anthropic's `event: error` (anthropic SDKs and Claude Code raise
    with it; a bare `data:` line makes them fail with no message). `/v1/responses`: a
    `response.failed` event, which Codex reads (`response.error.message`), that also
    carries a top-level `error` object, which is what openai-python and openai-node
    raise on (they pass `response.failed` to the caller without raising). Chat
    completions: `data: {"error": {...}}`, as before.
    """
    if route == ANTHROPIC_STREAM:
        return b"event: error\ndata: " + json.dumps(error_body(status, message, "anthropic")).encode() + b"\n\n"
    error = error_body(status, message, "openai")["error"]
    if route == RESPONSES_STREAM:
        failed = {
            "type": "response.failed",
            "sequence_number": 0,
            "response": {"id": "resp_gateway", "object": "response", "status": "failed", "output": [], "error": {"code": "server_error", "message": message}},
            "error": error,
        }
        return b"event: response.failed\ndata: " + json.dumps(failed).encode() + b"\n\n"
    return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"


def stream_error_tail(content_type: str, message: str, last_bytes: bytes, status: int = 502, route: str = "") -> bytes:
    """The last bytes to send when a stream breaks after its head went out.

    Mirrors Ollama: NDJSON ends with an `{"error": ...}` line, SSE with an error event
    in the form the route's API clients read (`_sse_error_event`). `last_bytes` (the end
    of what was sent) decides how to close a half-sent line or event first. Other bodies
    cannot carry an error in band: b"" (the caller cuts them short).
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
        return separator + _sse_error_event(route, message, status)
    return b""
