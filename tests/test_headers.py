"""proxy.headers: pure header rules."""

from __future__ import annotations

import pytest

from proxy.headers import body_length, client_response_headers, upstream_request_headers


def names(headers):
    return [name for name, _ in headers]


def test_upstream_drops_hop_by_hop_host_origin_length_and_credentials():
    headers = [
        ("Host", "garden.modal.run"),
        ("Origin", "https://chat.example"),
        ("Content-Length", "12"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "keep-alive, X-Private"),
        ("X-Private", "1"),
        ("TE", "trailers"),
        ("Upgrade", "h2c"),
        ("Proxy-Authorization", "Basic x"),
        ("Authorization", "Bearer k"),
        ("X-API-Key", "k"),
        ("Modal-Key", "wk-1"),
        ("Modal-Secret", "ws-1"),
        ("Cookie", "session=1"),
        ("Content-Type", "application/json"),
        ("X-Stainless-Lang", "python"),
        ("Accept", "application/x-ndjson"),
    ]
    assert names(upstream_request_headers(headers)) == ["Content-Type", "X-Stainless-Lang", "Accept"]


def test_client_side_keeps_content_headers_and_repeats():
    headers = [
        ("Content-Type", "application/x-ndjson"),
        ("Transfer-Encoding", "chunked"),
        ("Content-Length", "5"),
        ("Date", "x"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Keep-Alive", "timeout=5"),
    ]
    assert client_response_headers(headers) == [("Content-Type", "application/x-ndjson"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]


@pytest.mark.parametrize(
    ("headers", "length"),
    [
        ([("Content-Type", "application/json"), ("Content-Length", "12")], 12),
        ([("content-length", " 0 ")], 0),
        ([("Content-Length", "12"), ("Content-Length", "12")], 12),
        ([("Content-Length", "12"), ("Content-Length", "13")], None),  # which one? neither
        ([("Content-Length", "12"), ("Transfer-Encoding", "chunked")], None),
        ([("Transfer-Encoding", "chunked")], None),
        ([("Content-Length", "-1")], None),
        ([("Content-Length", "1e3")], None),
        ([("Content-Length", "²")], None),  # a digit to str.isdigit(), not to int()
        ([], None),  # a body that runs until the connection closes
    ],
)
def test_body_length_is_the_declared_length_of_a_length_delimited_body(headers, length):
    assert body_length(headers) == length
