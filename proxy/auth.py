"""API keys: who may use the gateway. Pure functions; the middleware lives in proxy.app."""

from __future__ import annotations

import hmac
from collections.abc import Mapping


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a client sent: `Authorization: Bearer <key>` (OpenAI SDK, ollama clients)
    or `X-API-Key: <key>`."""
    authorization = headers.get("Authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = headers.get("X-API-Key", "").strip()
    return key or None


def key_is_valid(presented: str | None, keys: tuple[str, ...]) -> bool:
    """Constant-time check against every configured key (no early exit on a match)."""
    if presented is None:
        return False
    # aiohttp decodes header bytes with surrogateescape: encode them back the same way.
    given = presented.encode("utf-8", "surrogateescape")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode("utf-8", "surrogateescape"))
    return matched
