"""proxy.paths: pure path rules."""

from __future__ import annotations

import pytest

from proxy.paths import api_family, upstream_path


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


@pytest.mark.parametrize(("path", "family"), [("/v1/chat/completions", "openai"), ("/v1", "openai"), ("/api/chat", "ollama"), ("/v1x", "ollama"), ("/", "ollama")])
def test_api_family(path, family):
    assert api_family(path) == family
