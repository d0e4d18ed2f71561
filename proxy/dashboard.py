"""The garden's page: `GET /` (proxy/static/garden.html, its script and style) and the
JSON it polls, `GET /garden/usage`.

The page and its two files are public (they hold nothing; the page asks for a key) and
served with a strict Content-Security-Policy: only this origin's script, style and
fetches, nothing inline, no frames. The JSON is behind the guard like /metrics, except
that a key with an allowlist may read it too, and then sees only its own usage. It is
built from what the gateway already holds in memory: polling it never calls Modal, let
alone a GPU.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from proxy.forward import MODEL_RULES
from proxy.garden import Garden

STATIC = Path(__file__).parent / "static"
PAGE_PATH = "/"
USAGE_PATH = "/garden/usage"
ASSETS = {"/garden/garden.js": ("garden.js", "text/javascript"), "/garden/garden.css": ("garden.css", "text/css")}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
VIEWER = web.RequestKey("garden_viewer", str)  # the key name, set by the guard
SEES_EVERYTHING = web.RequestKey("garden_sees_everything", bool)  # False for a key with an allowlist


def _static(name: str, content_type: str) -> tuple[bytes, str]:
    body = (STATIC / name).read_bytes()  # read once, at start
    return body, content_type


def add_routes(app: web.Application, garden: Garden, expect_handler) -> tuple[list[web.AbstractRoute], list[web.AbstractRoute]]:  # noqa: ANN001
    """(public routes: the page and its files; guarded routes: the usage JSON)."""
    files = {PAGE_PATH: _static("garden.html", "text/html")} | {path: _static(name, kind) for path, (name, kind) in ASSETS.items()}

    def serve(path: str):  # noqa: ANN202
        body, content_type = files[path]

        async def handler(request: web.Request) -> web.Response:
            return web.Response(body=body, content_type=content_type, charset="utf-8", headers=PAGE_HEADERS)

        return handler

    public = [app.router.add_get(path, serve(path), expect_handler=expect_handler) for path in files]

    async def usage(request: web.Request) -> web.Response:
        # Fail closed: only the guard says that a key sees everything.
        rules = request.get(MODEL_RULES)
        report = garden.report(request.get(VIEWER, ""), request.get(SEES_EVERYTHING, False), rules.allows if rules is not None else None)
        return web.json_response(report, headers={"Cache-Control": "no-store"})

    guarded = [app.router.add_get(USAGE_PATH, usage, expect_handler=expect_handler)]
    return public, guarded
