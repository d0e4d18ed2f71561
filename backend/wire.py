"""What crosses the gateway -> backend seam.

Only plain values cross it (they are pickled by Modal): a request is a dict, the
response is a head dict followed by body frames. Keeping these shapes in one module
lets both transports and both sides agree without sharing classes.

Every frame of a response names the run that made it. Modal re-runs a preempted input
in another container, and the caller's client skips the frames whose index it already
has, so a stream can go on with frames of a second generation; the run mark is how the
gateway sees that, and never relays them (proxy.transport).
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
    run: int  # this run of the request (a re-run elsewhere has another); from the backend
    body: bytes  # a body of declared length: its first bytes, in the same frame as the head
    cold_start: bool  # the request waited for its container to start


# A body frame: (run, chunk). A run's last frame is (run, END): a stream that stops
# without it was cut by a re-run that had fewer frames than were already received.
BodyFrame = tuple[int, bytes]
END = b""

# A stream is one HeadFrame, then zero or more body frames, then the end frame.
Frame = Union[HeadFrame, BodyFrame]


def _plain(headers: Headers) -> Headers:
    # aiohttp's header names are multidict `istr`s: make them plain str before pickling.
    return [(str(name), str(value)) for name, value in headers]


def request_frame(method: str, path: str, headers: Headers, body: bytes) -> RequestFrame:
    return {"method": method, "path": path, "headers": _plain(headers), "body": bytes(body)}


def head_frame(status: int, headers: Headers) -> HeadFrame:
    return {"status": int(status), "headers": _plain(headers)}


def declares_length(headers: Headers) -> bool:
    """A body delimited by its Content-Length (not chunked, not until close)."""
    names = {name.lower() for name, _ in headers}
    return "content-length" in names and "transfer-encoding" not in names


class BackendUnavailable(Exception):
    """The backend cannot serve at all (Ollama not reachable or not installed).

    Raised before the head frame; the gateway answers 503 with the message. Plain
    `Exception` with a string argument, so it survives Modal's pickling.
    """


class UpstreamBroken(Exception):
    """Ollama's response ended abnormally after the head was sent."""


class BackendPreempted(UpstreamBroken):
    """The GPU container was preempted after part of the answer reached the client, and
    Modal's re-run could not continue it: the answer is incomplete."""
