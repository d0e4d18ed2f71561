"""How a request's answer will stream, from what Ollama reads in it (`proxy.reading`)."""

from __future__ import annotations

from proxy.reading import Reading

NDJSON = "application/x-ndjson"  # Ollama's native streams
SSE = "text/event-stream"  # Ollama's OpenAI- and Anthropic-compatible streams

# Routes whose answer streams: native ones unless "stream": false (generation, and the
# progress of pulls, pushes and creates), OpenAI's and Anthropic's if "stream": true.
_NATIVE_STREAMS = frozenset({"/api/chat", "/api/generate", "/api/pull", "/api/push", "/api/create"})
_SSE_STREAMS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"})


def stream_content_type(method: str, route: str, facts: Reading) -> str | None:
    """The content type this request's answer will stream with, or None if it will not
    stream (then the client waits for the whole answer, as Ollama's own clients expect)."""
    if method != "POST" or not facts.is_object:
        return None
    if route in _NATIVE_STREAMS and facts.stream is not False:
        return NDJSON  # Ollama streams unless told not to
    if route in _SSE_STREAMS and facts.stream is True:
        return SSE
    return None
