"""Which Ollama routes write to the model store (see Ollama's server/routes.go).

Used by the backend (commit the volume after such a write) and by the gateway's
read-only mode (serve only reading and inference).
"""

from __future__ import annotations

from urllib.parse import unquote

_WRITES = {("POST", "/api/pull"), ("POST", "/api/push"), ("POST", "/api/create"), ("POST", "/api/copy"), ("DELETE", "/api/delete")}

# What a read-only garden serves: reading and inference, from Ollama's route table
# (server/routes.go, GenerateRoutes). Everything else is refused, including routes
# Ollama adds later (account routes such as /api/signout and /api/user/keys are new).
_READ_ONLY_ROUTES = frozenset(
    {
        ("GET", "/"), ("HEAD", "/"),
        ("GET", "/api/version"), ("HEAD", "/api/version"),
        ("GET", "/api/tags"), ("HEAD", "/api/tags"),
        ("GET", "/api/ps"),
        ("POST", "/api/show"),
        ("POST", "/api/generate"), ("POST", "/api/chat"),
        ("POST", "/api/embed"), ("POST", "/api/embeddings"),
        ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("POST", "/v1/embeddings"),
        ("POST", "/v1/responses"), ("POST", "/v1/messages"),
        ("GET", "/v1/models"),
    }
)  # fmt: skip


def path_segments(path: str) -> list[str]:
    """The segments of `path` with empty and dot segments resolved, never above the root."""
    segments: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return segments


def route_of(path: str) -> str:
    """The route Ollama will match for `path`: decoded as Go's URL.Path is (`/api/%70ull`
    and `/api%2Fpull` are `/api/pull` to it), without query, dot segments or extra slashes.

    For classifying requests only; the path forwarded stays as the client encoded it.
    """
    return "/" + "/".join(path_segments(unquote(path.partition("?")[0])))


def writes_model_store(method: str, path: str) -> bool:
    """True for pull, push, create, copy, delete and blob uploads (`POST /api/blobs/<digest>`)."""
    method = method.upper()
    if method not in ("POST", "DELETE"):
        return False  # no route is decoded for a read
    route = route_of(path)
    return (method, route) in _WRITES or (method == "POST" and route.startswith("/api/blobs/"))


def allowed_when_read_only(method: str, path: str) -> bool:
    """True for what reading and inference need (`_READ_ONLY_ROUTES`, and
    `GET /v1/models/<model>`); decided on the route Ollama will match."""
    route = route_of(path)
    method = method.upper()
    return (method, route) in _READ_ONLY_ROUTES or (method == "GET" and route.startswith("/v1/models/"))
