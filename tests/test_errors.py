"""proxy.errors: error shapes and the in-band end of a broken stream."""

from __future__ import annotations

import json

import pytest

from proxy.errors import error_body, stream_error_tail


def test_ollama_shape():
    assert error_body(503, "down", "ollama") == {"error": "down"}


@pytest.mark.parametrize(("status", "kind"), [(401, "authentication_error"), (404, "not_found_error"), (400, "invalid_request_error"), (503, "api_error")])
def test_openai_shape(status, kind):
    assert error_body(status, "m", "openai") == {"error": {"message": "m", "type": kind, "param": None, "code": None}}


@pytest.mark.parametrize(("last", "prefix"), [(b"", b""), (b"}\n", b""), (b'{"a', b"\n")])
def test_ndjson_tail_starts_its_own_line(last, prefix):
    tail = stream_error_tail("application/x-ndjson", "boom", last)
    assert tail == prefix + b'{"error": "boom"}\n'


@pytest.mark.parametrize(("last", "prefix"), [(b"", b""), (b"\n\n", b""), (b"}\n", b"\n"), (b'"}', b"\n\n")])
def test_sse_tail_starts_its_own_event(last, prefix):
    tail = stream_error_tail("text/event-stream; charset=utf-8", "boom", last)
    assert tail.startswith(prefix + b"data: ") and tail.endswith(b"\n\n")
    assert json.loads(tail[len(prefix) + 6 :])["error"]["message"] == "boom"


def test_other_bodies_just_end():
    assert stream_error_tail("application/json", "boom", b"{") == b""
