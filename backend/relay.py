"""The relay: one request to the local Ollama, streamed back as frames.

This is the code the Modal method runs on the GPU container, and the code local mode
runs in process. It holds one aiohttp connection pool for its whole life and never
reads a whole response body: each chunk is yielded as soon as Ollama sends it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
from yarl import URL

from backend.wire import BackendUnavailable, Frame, RequestFrame, UpstreamBroken, head_frame

log = logging.getLogger(__name__)

# No total timeout: a generation may legitimately run for the whole request timeout,
# which the caller enforces. Connecting to a loopback Ollama is instant or it is down.
_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10, sock_read=None)


class OllamaRelay:
    """Forwards `RequestFrame`s to one Ollama at `base_url` (e.g. http://127.0.0.1:11434)."""

    def __init__(self, base_url: str) -> None:
        url = URL(base_url)
        if url.host is None or url.scheme not in ("http", "https"):
            raise ValueError(f"not an http(s) base URL: {base_url!r}")
        self.base_url = url
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Created lazily so it binds to the event loop that serves requests.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=_TIMEOUT,
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None),
                auto_decompress=False,  # relay bytes exactly as Ollama sent them
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        return self._session

    def url_for(self, path: str) -> URL:
        """The URL on *this* Ollama for an origin-form `path` (with its query)."""
        raw_path, _, query = path.partition("?")
        if not raw_path.startswith("/") or raw_path.startswith("//"):
            raise ValueError(f"not an origin-form path: {path!r}")
        return URL.build(
            scheme=self.base_url.scheme,
            host=self.base_url.raw_host or "",
            port=self.base_url.port,
            path=raw_path,
            query_string=query,
            encoded=True,  # keep the client's percent-encoding as it was
        )

    async def stream(self, request: RequestFrame) -> AsyncIterator[Frame]:
        """Yield the head frame, then body chunks as they arrive.

        Closing this generator early (the client left) closes the upstream
        connection, which is how Ollama learns to stop generating.
        """
        url = self.url_for(request["path"])
        # aiohttp sets Host from the URL: Ollama sees its own host:port.
        headers = [(k, v) for k, v in request["headers"] if k.lower() != "host"]
        try:
            response = await self._client().request(
                request["method"],
                url,
                headers=headers,
                data=request["body"] or None,
                allow_redirects=False,
            )
        except (aiohttp.ClientConnectionError, OSError, asyncio.TimeoutError) as exc:
            raise BackendUnavailable(f"Ollama is not reachable at {self.base_url}: {exc or type(exc).__name__}") from None
        try:
            yield head_frame(response.status, list(response.headers.items()))
            if request["method"] == "HEAD":
                return
            content = response.content
            while chunk := await content.readany():  # b"" only at the end of the body
                yield chunk
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, OSError) as exc:
            raise UpstreamBroken(f"Ollama's response ended early: {exc or type(exc).__name__}") from None
        finally:
            # release() would drain the body into the pool; close() drops the
            # connection, which is what cancels a generation mid-stream.
            if response.content.at_eof():
                response.release()
            else:
                response.close()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
