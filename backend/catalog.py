"""The catalog: what Ollama answered about its model store, kept where every gateway
container can read it without waking a GPU.

The backend builds it from its own Ollama after start-up (after the pulls) and after
every successful store change, and writes it to a `modal.Dict`; the gateway answers
`/`, `/api/version`, `/api/tags`, `/api/show` and `/v1/models[/…]` from it
(`proxy.catalog`). A catalog that could not be built is removed, never left stale:
no catalog means "forward as before".

Why a Dict and not a file on the models volume: the gateway would have to mount the
volume and `reload()` it to see a change, and a reload fails while files are open;
a Dict read is one call that sees the latest write from any container.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any, TypedDict
from urllib.parse import quote

from backend.names import parse_name

log = logging.getLogger(__name__)

CATALOG_KEY = "catalog"
FORMAT = 1  # bump when the shape changes: a gateway ignores a catalog of another format


class Entry(TypedDict):
    """One answer of Ollama's, kept byte for byte."""

    status: int
    content_type: str
    body: bytes


class CatalogError(Exception):
    """Ollama did not answer as a catalog needs."""


def _fetch(base_url: str, method: str, path: str, payload: dict | None = None, timeout: float = 10.0) -> Entry:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(base_url + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (our own Ollama)
            return {"status": response.status, "content_type": response.headers.get("Content-Type", ""), "body": response.read()}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "content_type": exc.headers.get("Content-Type", ""), "body": exc.read()}


def _ok(entry: Entry, what: str) -> Entry:
    if entry["status"] != 200:
        raise CatalogError(f"{what} answered {entry['status']}")
    return entry


def build_catalog(base_url: str) -> dict[str, Any]:
    """Ask the Ollama at `base_url` everything the gateway may answer for it."""
    tags = _ok(_fetch(base_url, "GET", "/api/tags"), "/api/tags")
    models = {}
    for listed in json.loads(tags["body"])["models"]:
        name = listed["name"]
        parsed = parse_name(name)
        if parsed is None:
            continue  # a name the gateway cannot match: requests for it are forwarded
        show = _ok(_fetch(base_url, "POST", "/api/show", {"model": name}), f"/api/show {name}")
        one = _fetch(base_url, "GET", "/v1/models/" + quote(name, safe=":"))
        created = json.loads(one["body"]).get("created") if one["status"] == 200 else None
        models[parsed.key] = {"name": name, "show": show, "created": created}
    return {
        "format": FORMAT,
        "built_at": time.time(),
        "root": _ok(_fetch(base_url, "GET", "/"), "/"),
        "version": _ok(_fetch(base_url, "GET", "/api/version"), "/api/version"),
        "tags": tags,
        "v1_models": _ok(_fetch(base_url, "GET", "/v1/models"), "/v1/models"),
        "models": models,
    }


class DictCatalog:
    """The catalog in a `modal.Dict` (or anything with its get/put/pop API): written by
    the backend (blocking calls, from its start-up hook or a worker thread), read by
    the gateway (async).

    Each side names the Ollama release it was deployed with: the Dict outlives deploys,
    and after an upgrade the old release's answers must not be served as the new one's.
    """

    def __init__(self, store: Any, ollama_version: str, pool: str = "default") -> None:
        self.store = store
        self.ollama_version = ollama_version
        # One catalog per GPU pool: each is what that pool's Ollama answers, so the gateway
        # answers exactly what the pool a request goes to would (their views of the shared
        # volume differ until a container restarts).
        self.key = CATALOG_KEY if pool == "default" else f"{CATALOG_KEY}:{pool}"

    def write(self, catalog: dict[str, Any]) -> None:
        self.store.put(self.key, {**catalog, "deployed_ollama": self.ollama_version})

    def remove(self) -> None:
        self.store.pop(self.key, None)

    async def read(self) -> dict[str, Any] | None:
        catalog = await self.store.get.aio(self.key)
        if not isinstance(catalog, dict) or catalog.get("format") != FORMAT or catalog.get("deployed_ollama") != self.ollama_version:
            return None
        return catalog


def refresh(base_url: str, catalog: DictCatalog, reason: str) -> bool:
    """Build the catalog and write it; on any failure remove it (a stale catalog would
    answer wrongly; a missing one only means "forward"). Blocking."""
    started = time.monotonic()
    try:
        built = build_catalog(base_url)
        catalog.write(built)
    except Exception as exc:  # noqa: BLE001 (Ollama, JSON or the Dict: all mean "no catalog")
        log.warning("catalog not written (%s): %s: %s; the gateway forwards metadata requests", reason, type(exc).__name__, exc)
        try:
            catalog.remove()
        except Exception as remove_exc:  # noqa: BLE001
            log.error("could not remove the old catalog either: %s", remove_exc)
        return False
    log.info("catalog written (%s): %d models in %.2fs", reason, len(built["models"]), time.monotonic() - started)
    return True
