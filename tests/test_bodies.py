"""proxy.bodies: the model and stream fields of a request body, and whether it streams."""

from __future__ import annotations

import json
import time

import pytest

from proxy.bodies import NDJSON, PARSE_LIMIT, SSE, BodyFacts, body_facts, stream_content_type

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}


def test_small_bodies_are_parsed_for_their_model_and_stream_only():
    assert body_facts(json.dumps(CHAT).encode(), "application/json") == BodyFacts(True, "llama3.2", None)
    assert body_facts(b'{"model": "m", "stream": false}', "") == BodyFacts(True, "m", False)  # curl -d: a form content type
    assert body_facts(b'{"Model": "m", "Stream": false}', "application/json") == BodyFacts(True, "m", False)  # Go folds key case
    assert body_facts(b'{"model": "m", "Model": "n"}', "application/json").model == "m"  # the exact key first, as Go
    assert body_facts(b'{"stream": "no"}', "application/json") == BodyFacts(True, None, None)
    for not_an_object in (b"{oops", b'["model"]', b"", b"[" * 60_000, b"\xff\xfe{}"):
        assert body_facts(not_an_object, "application/json") == BodyFacts()


def test_a_large_body_is_scanned_not_parsed():
    image = "A" * (4 * 1024 * 1024)  # a base64 image
    body = json.dumps({**CHAT, "images": [image], "stream": False}).encode()
    assert len(body) > PARSE_LIMIT
    assert body_facts(body, "application/json") == BodyFacts(True, "llama3.2", False)
    assert body_facts(json.dumps({**CHAT, "images": [image]}).encode(), "application/json") == BodyFacts(True, "llama3.2", None)
    # A prompt that quotes the key is not the key: its quotes are escaped in JSON.
    tricky = json.dumps({**CHAT, "prompt": 'say "stream": false ' + image, "stream": True}).encode()
    assert body_facts(tricky, "application/json").stream is True
    # Objects nested 60,000 deep cost no tree (and no recursion) above the limit.
    started = time.perf_counter()
    assert body_facts(b"{" + b'"a":{' * 60_000 + b"}" * 60_001, "application/json").is_object
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    ("method", "route", "facts", "streams"),
    [
        ("POST", "/api/chat", BodyFacts(True, "m", None), NDJSON),  # Ollama streams by default
        ("POST", "/api/generate", BodyFacts(True, "m", True), NDJSON),
        ("POST", "/api/chat", BodyFacts(True, "m", False), None),
        ("POST", "/v1/chat/completions", BodyFacts(True, "m", True), SSE),
        ("POST", "/v1/completions", BodyFacts(True, "m", True), SSE),
        ("POST", "/v1/chat/completions", BodyFacts(True, "m", None), None),  # OpenAI streams only when asked
        ("POST", "/api/chat", BodyFacts(), None),  # not JSON: Ollama's 400, at once
        ("POST", "/api/embed", BodyFacts(True, "m", True), None),
        ("GET", "/api/chat", BodyFacts(True, "m", True), None),
    ],
)
def test_stream_content_type(method, route, facts, streams):
    assert stream_content_type(method, route, facts) == streams
