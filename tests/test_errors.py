"""proxy.errors: error shapes and the in-band end of a broken stream."""

from __future__ import annotations

import json

import pytest

from proxy.errors import error_body, keepalive_bytes, stream_error_tail


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


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"), (404, "not_found_error"), (405, "invalid_request_error"),
     (413, "request_too_large"), (429, "rate_limit_error"), (500, "api_error"), (502, "api_error"), (503, "overloaded_error"), (504, "timeout_error"), (529, "overloaded_error")],
)  # fmt: skip
def test_anthropic_shape(status, kind):
    assert error_body(status, "m", "anthropic") == {"type": "error", "error": {"type": kind, "message": "m"}}


def test_anthropic_stream_ends_with_its_error_event_and_waits_with_ping_events():
    tail = stream_error_tail("text/event-stream", "model 'ghost' not found", b'"}\n', 404, route="/v1/messages")
    assert tail.startswith(b"\nevent: error\ndata: ") and tail.endswith(b"\n\n")
    assert json.loads(tail.partition(b"data: ")[2]) == {"type": "error", "error": {"type": "not_found_error", "message": "model 'ghost' not found"}}
    assert keepalive_bytes("text/event-stream", "/v1/messages") == b'event: ping\ndata: {"type": "ping"}\n\n'
    assert keepalive_bytes("text/event-stream", "/v1/chat/completions") == b": keep-alive\n\n"
    assert keepalive_bytes("application/x-ndjson", "/api/pull") == b" "


def test_responses_stream_ends_with_a_failed_response_that_also_carries_openais_error():
    tail = stream_error_tail("text/event-stream", "boom", b"", 502, route="/v1/responses")
    name, _, data = tail.partition(b"\ndata: ")
    event = json.loads(data)
    assert name == b"event: response.failed" and event["type"] == "response.failed"
    assert event["response"]["status"] == "failed" and event["response"]["error"]["message"] == "boom"  # what Codex reads
    assert event["error"] == {"message": "boom", "type": "api_error", "param": None, "code": None}  # what the openai SDKs raise on


def test_chat_completions_keep_their_error_event():
    tail = stream_error_tail("text/event-stream", "boom", b"", route="/v1/chat/completions")
    assert tail == b'data: {"error": {"message": "boom", "type": "api_error", "param": null, "code": null}}\n\n'
