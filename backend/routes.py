"""Which Ollama routes write to the model store (see Ollama's server/routes.go).

Used by the backend (commit the volume after such a write) and by the gateway's
read-only mode (refuse such writes).
"""

from __future__ import annotations

_WRITES = {("POST", "/api/pull"), ("POST", "/api/push"), ("POST", "/api/create"), ("POST", "/api/copy"), ("DELETE", "/api/delete")}


def writes_model_store(method: str, path: str) -> bool:
    """True for pull, push, create, copy, delete and blob uploads (`POST /api/blobs/<digest>`)."""
    route = path.partition("?")[0].rstrip("/") or "/"
    method = method.upper()
    return (method, route) in _WRITES or (method == "POST" and route.startswith("/api/blobs/"))
