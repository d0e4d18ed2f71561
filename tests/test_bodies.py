"""proxy.bodies: whether a request's answer streams, from Ollama's reading of it."""

from __future__ import annotations

import pytest

from proxy.bodies import NDJSON, SSE, stream_content_type
from proxy.reading import read_request


@pytest.mark.parametrize(
    ("method", "route", "body", "streams"),
    [
        ("POST", "/api/chat", b'{"model":"m"}', NDJSON),  # Ollama streams by default
        ("POST", "/api/generate", b'{"model":"m","stream":true}', NDJSON),
        ("POST", "/api/chat", b'{"model":"m","stream":false}', None),
        ("POST", "/api/chat", b'{"model":"m","Stream":false}', None),  # Go folds key case
        ("POST", "/api/chat", b'{"model":"m","stream":false,"stream":null}', NDJSON),  # null resets a *bool
        ("POST", "/v1/chat/completions", b'{"model":"m","stream":true}', SSE),
        ("POST", "/v1/completions", b'{"model":"m","stream":true}', SSE),
        ("POST", "/v1/chat/completions", b'{"model":"m","stream":true,"stream":null}', SSE),  # null keeps a bool
        ("POST", "/v1/chat/completions", b'{"model":"m"}', None),  # OpenAI streams only when asked
        # The coding agents' APIs stream when asked; pulls, pushes and creates unless told not to.
        ("POST", "/v1/messages", b'{"model":"m","stream":true}', SSE),
        ("POST", "/v1/messages", b'{"model":"m"}', None),
        ("POST", "/v1/responses", b'{"model":"m","stream":true}', SSE),
        ("POST", "/v1/responses", b'{"model":"m","stream":true,"stream":null}', None),  # null resets its *bool: Ollama does not stream
        ("POST", "/api/pull", b'{"model":"m"}', NDJSON),
        ("POST", "/api/push", b'{"name":"m"}', NDJSON),
        ("POST", "/api/create", b'{"model":"m","from":"b"}', NDJSON),
        ("POST", "/api/pull", b'{"model":"m","stream":false}', None),
        ("POST", "/api/chat", b"model=m", None),  # not JSON: Ollama's 400, at once
        ("POST", "/api/chat", b"null", None),
        ("POST", "/api/embed", b'{"model":"m","stream":true}', None),
        ("GET", "/api/chat", b'{"model":"m","stream":true}', None),
    ],
)
def test_stream_content_type(method, route, body, streams):
    assert stream_content_type(method, route, read_request(method, route, body)) == streams
