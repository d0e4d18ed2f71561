"""Compressed request bodies: where the gateway takes them, and how it inflates them.

Ollama inflates a `Content-Encoding: zstd` body on `POST /v1/responses` only (Codex
compresses its requests); everywhere else it would read the compressed bytes as JSON.
The gateway takes zstd and gzip there, inflates them while the body arrives, and sends
Ollama the decoded body: every rule (allowlist, pools, stream detection) reads what
Ollama will read. Inflation is bounded: output past `limit` bytes stops it, so a bomb
costs at most `limit` bytes of work before its 413.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterable, AsyncIterator, Iterator

import zstandard

# (method, route) where Ollama's handler takes a compressed body (middleware/openai.go).
DECODED_ROUTES = frozenset({("POST", "/v1/responses")})
ENCODINGS = ("zstd", "gzip")
ZSTD_MAX_WINDOW = 8 << 20  # Ollama's zstd.WithDecoderMaxMemory(8<<20): a frame may not ask for more
_OUT_CHUNK = 64 * 1024  # inflated bytes per step, so the limit is checked often


class BodyTooLarge(Exception):
    """The inflated body is over the limit."""


class BadEncoding(Exception):
    """The body is not valid data in its declared encoding."""


def decodable(method: str, route: str | None, encoding: str) -> bool:
    """May a body with this Content-Encoding (lower-cased, trimmed) be sent to this route?"""
    return encoding in ENCODINGS and (method, route) in DECODED_ROUTES


class _Capped:
    """The sink zstandard's stream writer writes into: refuses output past `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > self.limit:
            raise BodyTooLarge(f"the decompressed body is over {self.limit} bytes")
        self.parts.append(bytes(data))
        return len(data)


async def inflate(chunks: AsyncIterable[bytes], encoding: str, limit: int) -> bytes:
    """The decoded body of compressed `chunks` (as they arrive from the client), at most
    `limit` bytes, as is what arrives: BodyTooLarge past it, BadEncoding for data that
    is not `encoding`."""
    if encoding == "zstd":
        return await _inflate_zstd(_capped(chunks, limit), limit)
    if encoding == "gzip":
        return await _inflate_gzip(_capped(chunks, limit), limit)
    raise BadEncoding(f"unsupported Content-Encoding: {encoding[:40]}")


async def _capped(chunks: AsyncIterable[bytes], limit: int) -> AsyncIterator[bytes]:
    """`chunks`, refused past `limit` bytes (empty zstd frames inflate to nothing)."""
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the compressed body is over {limit} bytes")
        yield chunk


async def _inflate_zstd(chunks: AsyncIterable[bytes], limit: int) -> bytes:
    sink = _Capped(limit)
    decompressor = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
    # The stream writer calls sink.write per _OUT_CHUNK of output: the sink's refusal
    # stops a bomb within one step, whatever one input chunk would inflate to.
    writer = decompressor.stream_writer(sink, write_size=_OUT_CHUNK, closefd=False)
    try:
        async for chunk in chunks:
            writer.write(chunk)
    except zstandard.ZstdError as exc:
        raise BadEncoding(f"the body is not valid zstd data: {exc}") from None
    return b"".join(sink.parts)


async def _inflate_gzip(chunks: AsyncIterable[bytes], limit: int) -> bytes:
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)  # a gzip header and trailer
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in chunks:
            for out in _gzip_steps(decompressor, chunk):
                size += len(out)
                if size > limit:
                    raise BodyTooLarge(f"the decompressed body is over {limit} bytes")
                parts.append(out)
    except zlib.error as exc:
        raise BadEncoding(f"the body is not valid gzip data: {exc}") from None
    if not decompressor.eof:
        raise BadEncoding("the body is not valid gzip data: it ends before its gzip stream does")
    return b"".join(parts)


def _gzip_steps(decompressor: zlib._Decompress, data: bytes) -> Iterator[bytes]:
    """The inflated pieces of `data`, at most _OUT_CHUNK bytes each."""
    while not decompressor.eof:
        out = decompressor.decompress(data, _OUT_CHUNK)
        if out:
            yield out
        data = decompressor.unconsumed_tail
        if not data and len(out) < _OUT_CHUNK:
            return  # a full step may have left output in zlib: only a short one means none is left
