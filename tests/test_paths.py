"""proxy.paths: pure path rules."""

from __future__ import annotations

import pytest

from backend.routes import route_of
from proxy.paths import not_found_hint, route_api_family, upstream_path


@pytest.mark.parametrize(
    ("raw", "query", "expected"),
    [
        ("/ollama", "", "/"),
        ("/ollama/", "", "/"),
        ("/ollama/api/tags", "", "/api/tags"),
        ("/ollama/api/tags", "a=1&b=%20", "/api/tags?a=1&b=%20"),
        ("/ollama/v1/models/", "", "/v1/models/"),
        ("/ollama//host/x", "", "/host/x"),
        ("/ollama///x", "", "/x"),
        ("/ollama/../../etc/passwd", "", "/etc/passwd"),
        ("/ollama/a/./b/../c", "", "/a/c"),
        ("/ollama/http://evil/x", "", "/http:/evil/x"),
        ("/ollama/v1/models/library%2Fllama3", "", "/v1/models/library%2Fllama3"),
        ("/ollamax", "", None),
        ("/health", "", None),
        ("/", "", None),
    ],
)
def test_upstream_path(raw, query, expected):
    assert upstream_path(raw, query) == expected


@pytest.mark.parametrize("raw", ["/ollama//a", "/ollama/../..//b", "/ollama/http://x", "/ollama/.//.//c"])
def test_upstream_path_is_always_origin_form(raw):
    path = upstream_path(raw)
    assert path.startswith("/") and not path.startswith("//")


@pytest.mark.parametrize(
    ("path", "family"),
    [
        ("/v1/chat/completions", "openai"), ("/v1", "openai"), ("/v1/responses", "openai"), ("/v1/messages", "anthropic"),
        ("/v1/messages/count_tokens", "anthropic"), ("/v1/messagesx", "openai"), ("/v1/%6Dessages", "anthropic"),
        ("/api/chat", "ollama"), ("/v1x", "ollama"), ("/", "ollama"),
    ],
)  # fmt: skip
def test_api_family(path, family):
    assert route_api_family(route_of(path)) == family


@pytest.mark.parametrize(
    ("path", "route"),
    [("/api/%70ull", "/api/pull"), ("/api%2Fdelete?x=1", "/api/delete"), ("/a/../b/./c//d/", "/b/c/d"), ("/", "/"), ("/%2e%2e/x", "/x")],
)
def test_route_of_is_what_ollama_matches(path, route):
    from backend.routes import route_of

    assert route_of(path) == route


def test_api_family_of_encoded_openai_paths():
    assert route_api_family(route_of("/v1%2Fmodels")) == "openai"


@pytest.mark.parametrize(
    ("route", "example"),
    [
        ("/", "/ollama/api/chat"),
        ("/api/chat", "/ollama/api/chat"),
        ("/v1/models/llama3.2:latest", "/ollama/v1/models/llama3.2:latest"),
        ("/ollamax/api/tags", "/ollama/api/chat"),
        ("/api/<script>", "/ollama/api/chat"),  # never echoes what is not a plain route
        ("/api/" + "x" * 200, "/ollama/api/chat"),
    ],
)
def test_not_found_hint_points_at_the_prefix(route, example):
    assert not_found_hint(route) == f"not found: Ollama's API is under /ollama/, e.g. {example}"
