"""Who may use the gateway: API keys, browser origins, Host. Pure functions; the
middleware lives in proxy.app."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from config import ApiKey


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a client sent: `Authorization: Bearer <key>` (OpenAI SDK, ollama clients)
    or `X-API-Key: <key>`."""
    authorization = headers.get("Authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = headers.get("X-API-Key", "").strip()
    return key or None


def key_name(presented: str | None, keys: tuple[ApiKey, ...]) -> str | None:
    """The name of the key presented, compared in constant time against every key (no
    early exit on a match); None if it is none of them."""
    if presented is None:
        return None
    # aiohttp decodes header bytes with surrogateescape: encode them back the same way.
    given = presented.encode("utf-8", "surrogateescape")
    found = None
    for key in keys:
        if hmac.compare_digest(given, key.key.encode("utf-8", "surrogateescape")):
            found = key.name
    return found


# What Ollama itself lets in by default (envconfig.AllowedOrigins): local pages and apps.
LOCAL_ORIGIN_HOSTS = frozenset({"localhost", "127.0.0.1", "0.0.0.0", "[::1]"})
LOCAL_ORIGIN_SCHEMES = ("app://", "file://", "tauri://", "vscode-webview://", "vscode-file://")
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def _hostname(authority: str) -> str:
    """`host:port` -> `host`; `[::1]:80` -> `[::1]`; lower case."""
    if authority.startswith("["):
        return authority.split("]", 1)[0].lower() + "]"
    return authority.rsplit(":", 1)[0].lower()


def is_local_origin(origin: str) -> bool:
    if origin.startswith(LOCAL_ORIGIN_SCHEMES):
        return True
    scheme, sep, rest = origin.partition("://")
    return bool(sep) and scheme in ("http", "https") and _hostname(rest.split("/", 1)[0]) in LOCAL_ORIGIN_HOSTS


def origin_may_call(origin: str | None, allowed: tuple[str, ...], keys_required: bool) -> bool:
    """May a request carrying this browser `Origin` reach Ollama?

    With API keys, yes: a page cannot send a key it does not have. Without keys the
    gateway is the only guard (it strips Origin, so Ollama cannot check it): like Ollama,
    it lets in requests without an Origin (curl, SDKs), the listed origins, and, for `*`,
    only local pages and apps. Otherwise any website could drive your models from its
    visitors' browsers.
    """
    if keys_required or origin is None or origin in allowed:
        return True
    return "*" in allowed and is_local_origin(origin)


def is_loopback_name(name: str) -> bool:
    """`name` (a host name or address, IPv6 with or without brackets) is loopback."""
    return name.lower() in LOOPBACK_NAMES


def is_loopback_host(host: str) -> bool:
    """`Host` names a loopback address (any port): a defence against DNS rebinding."""
    return is_loopback_name(_hostname(host))
