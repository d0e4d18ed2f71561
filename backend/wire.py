"""What crosses the gateway -> backend seam.

Only plain values cross it (they are pickled by Modal): a request is a dict, the
response is a head dict followed by `bytes` chunks. Keeping these shapes in one module
lets both transports and both sides agree without sharing classes.
"""

from __future__ import annotations

from typing import TypedDict, Union

Headers = list[tuple[str, str]]


class RequestFrame(TypedDict, total=False):
    request_id: str  # set by a remote transport, so a stop signal can name this request
    sent_at: float  # wall-clock time the remote transport sent it (to tell a cold start)
    method: str
    path: str  # origin-form: "/api/chat?x=1", always rooted on the backend's own Ollama
    headers: Headers
    body: bytes
    model: str | None  # the model Ollama will use, as the gateway read it (proxy.reading): pools route on it


class HeadFrame(TypedDict, total=False):
    status: int  # always there
    headers: Headers  # always there
    cold_start: bool  # the request waited for its container to start


# A stream is one HeadFrame, then zero or more bytes chunks.
Frame = Union[HeadFrame, bytes]


def _plain(headers: Headers) -> Headers:
    # aiohttp's header names are multidict `istr`s: make them plain str before pickling.
    return [(str(name), str(value)) for name, value in headers]


def request_frame(method: str, path: str, headers: Headers, body: bytes) -> RequestFrame:
    return {"method": method, "path": path, "headers": _plain(headers), "body": bytes(body)}


def head_frame(status: int, headers: Headers) -> HeadFrame:
    return {"status": int(status), "headers": _plain(headers)}


class BackendUnavailable(Exception):
    """The backend cannot serve at all (Ollama not reachable or not installed).

    Raised before the head frame; the gateway answers 503 with the message. Plain
    `Exception` with a string argument, so it survives Modal's pickling.
    """


class UpstreamBroken(Exception):
    """Ollama's response ended abnormally after the head was sent."""
