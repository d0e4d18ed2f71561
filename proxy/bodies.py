"""What the gateway reads from a request body: its `model` and `stream` fields, once.

Never anything else (no prompt, no images): these two decide how a request is answered
(a stream gets its head early during a cold start) and name the model in the log.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

NDJSON = "application/x-ndjson"  # Ollama's native streams
SSE = "text/event-stream"  # Ollama's OpenAI-compatible streams

# Routes whose answer streams: native ones unless "stream": false, OpenAI ones if "stream": true.
_NATIVE_STREAMS = frozenset({"/api/chat", "/api/generate"})
_OPENAI_STREAMS = frozenset({"/v1/chat/completions", "/v1/completions"})


@dataclass(frozen=True)
class BodyFacts:
    is_object: bool = False  # the body is a JSON object
    model: str | None = None
    stream: bool | None = None  # the "stream" field, when it is a boolean


# A body larger than this (images, long contexts) is not parsed into objects: its two
# fields are found by a scan, so a 100 MB body costs no tree and no long pause.
PARSE_LIMIT = 64 * 1024
# In JSON a quote inside a string is escaped, so `"stream"` followed by a colon can only be
# a key (top level or nested: the last one wins, as in Go's decoder for a repeated key).
_STREAM_KEY = re.compile(rb'"stream"\s*:\s*(true|false)')
_MODEL_KEY = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')


def _field(parsed: dict, name: str) -> object:
    """`parsed[name]` as Go's encoding/json finds it: the exact key, else one that differs in case."""
    if name in parsed:
        return parsed[name]
    return next((value for key, value in parsed.items() if isinstance(key, str) and key.lower() == name), None)


def body_facts(body: bytes, content_type: str = "") -> BodyFacts:
    """The facts of a JSON object body; `BodyFacts()` for anything else (Ollama's to refuse)."""
    if not body or ("json" not in content_type and not body.lstrip().startswith(b"{")):
        return BodyFacts()
    if len(body) > PARSE_LIMIT:
        if not body.lstrip().startswith(b"{"):
            return BodyFacts()
        streams = _STREAM_KEY.findall(body)
        model = _MODEL_KEY.search(body)
        return BodyFacts(True, model and model.group(1).decode("utf-8", "replace"), streams[-1] == b"true" if streams else None)
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past Python's limit
        return BodyFacts()
    if not isinstance(parsed, dict):
        return BodyFacts()
    model, stream = _field(parsed, "model"), _field(parsed, "stream")
    return BodyFacts(True, model[:200] if isinstance(model, str) else None, stream if isinstance(stream, bool) else None)


def stream_content_type(method: str, route: str, facts: BodyFacts) -> str | None:
    """The content type this request's answer will stream with, or None if it will not
    stream (then the client waits for the whole answer, as Ollama's own clients expect)."""
    if method != "POST" or not facts.is_object:
        return None
    if route in _NATIVE_STREAMS and facts.stream is not False:
        return NDJSON  # Ollama streams unless told not to
    if route in _OPENAI_STREAMS and facts.stream is True:
        return SSE
    return None


# Where each route names its models, as Ollama's handlers read them (server/routes.go):
# groups of fields, the first non-empty field of each group naming one model (Go's
# cmp.Or(req.Model, req.Name)). A copy names two models, a create its own and its base.
_MODEL_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "/api/copy": (("source",), ("destination",)),
    "/api/create": (("model", "name"), ("from",)),
}
_DEFAULT_FIELDS = (("model", "name"),)
# Routes that act on a model (everything else lists or describes the server).
MODEL_ROUTES = frozenset(
    {
        "/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/show", "/api/pull", "/api/push",
        "/api/delete", "/api/create", "/api/copy", "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
        "/v1/responses", "/v1/messages",
    }
)  # fmt: skip


class _Pairs(list):
    """A JSON object as its (key, value) pairs, in order (duplicates kept)."""


def names_a_model(route: str) -> bool:
    return route in MODEL_ROUTES or route.startswith("/v1/models/")


def models_named(route: str, body: bytes) -> tuple[str, ...] | None:
    """The models Ollama will use for this request, read as Go's encoding/json reads the
    body: only top-level keys, matched without regard to case (the last match wins), and
    invalid UTF-8 replaced rather than refused. () if it names none; None if the body is
    not a JSON object this parser can read (the caller decides: Ollama may read it)."""
    if route.startswith("/v1/models/"):
        return (route[len("/v1/models/") :],)
    if not body:
        return ()
    try:
        parsed = json.loads(body.decode("utf-8", "replace"), object_pairs_hook=_Pairs)
    except (ValueError, RecursionError):
        return None
    if not isinstance(parsed, _Pairs):
        return None
    fields = {key.casefold(): value for key, value in parsed}  # Go's EqualFold; the last one wins
    named = []
    for group in _MODEL_FIELDS.get(route, _DEFAULT_FIELDS):
        value = next((fields[f] for f in group if isinstance(fields.get(f), str) and fields[f]), None)
        if value is not None:
            named.append(value)
    return tuple(named)
