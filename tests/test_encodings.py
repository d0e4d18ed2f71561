"""proxy.encodings: where compressed request bodies are taken, and their bounded inflation."""

from __future__ import annotations

import gzip
import os

import pytest
import zstandard

from proxy import encodings
from proxy.encodings import BadEncoding, BodyTooLarge, decodable, inflate

LIMIT = 1024 * 1024


async def arriving(data: bytes, size: int = 16 * 1024):
    for at in range(0, len(data), size):
        yield data[at : at + size]


def compressed(encoding: str, data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data) if encoding == "zstd" else gzip.compress(data)


@pytest.mark.parametrize(
    ("method", "route", "encoding", "taken"),
    [
        ("POST", "/v1/responses", "zstd", True), ("POST", "/v1/responses", "gzip", True),
        ("POST", "/v1/responses", "br", False), ("POST", "/v1/responses", "deflate", False),
        ("POST", "/v1/chat/completions", "zstd", False), ("POST", "/v1/messages", "zstd", False), ("POST", "/api/chat", "gzip", False),
        ("GET", "/v1/responses", "zstd", False), ("POST", None, "zstd", False),
    ],
)  # fmt: skip
def test_only_ollamas_compressed_route_takes_a_compressed_body(method, route, encoding, taken):
    assert decodable(method, route, encoding) is taken


@pytest.mark.parametrize("encoding", ["zstd", "gzip"])
async def test_a_body_is_inflated_as_it_arrives(encoding):
    body = os.urandom(200_000).hex().encode()  # 400 KB, some of it compressible
    assert await inflate(arriving(compressed(encoding, body)), encoding, LIMIT) == body


@pytest.mark.parametrize("encoding", ["zstd", "gzip"])
async def test_a_bomb_costs_at_most_the_limit_of_work(encoding, monkeypatch):
    inflated = []
    if encoding == "zstd":
        write = encodings._Capped.write
        monkeypatch.setattr(encodings._Capped, "write", lambda self, data: inflated.append(len(data)) or write(self, data))
    else:
        steps = encodings._gzip_steps
        monkeypatch.setattr(encodings, "_gzip_steps", lambda d, data: (inflated.append(len(out)) or out for out in steps(d, data)))
    bomb = compressed(encoding, bytes(64 * LIMIT))  # 64 MB of zeros in a few kilobytes
    with pytest.raises(BodyTooLarge):
        await inflate(arriving(bomb), encoding, LIMIT)
    assert LIMIT < sum(inflated) <= LIMIT + encodings._OUT_CHUNK  # stopped within one step of the limit


async def test_compressed_bytes_count_against_the_limit_too():
    empty_frames = zstandard.ZstdCompressor().compress(b"") * (LIMIT // 8)  # inflate to nothing
    with pytest.raises(BodyTooLarge):
        await inflate(arriving(empty_frames), "zstd", LIMIT)


@pytest.mark.parametrize(("encoding", "data"), [("zstd", b"not zstd at all"), ("gzip", b"not gzip at all"), ("gzip", gzip.compress(b"{}" * 1000)[:-20])])
async def test_data_that_is_not_its_encoding_is_a_bad_encoding(encoding, data):
    with pytest.raises(BadEncoding):
        await inflate(arriving(data), encoding, LIMIT)


async def test_a_zstd_frame_asking_for_a_window_over_ollamas_limit_is_refused():
    # Streamed without a content size, the frame keeps the 128 MB window it declares.
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=27, write_content_size=False)
    compressor = zstandard.ZstdCompressor(compression_params=params).compressobj()
    data = compressor.compress(os.urandom(1000)) + compressor.flush()
    assert zstandard.get_frame_parameters(data).window_size == 128 * 1024 * 1024
    with pytest.raises(BadEncoding, match="too much memory"):
        await inflate(arriving(data), "zstd", LIMIT)
