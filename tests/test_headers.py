"""proxy.headers: pure header rules."""

from __future__ import annotations

from proxy.headers import client_response_headers, upstream_request_headers


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
