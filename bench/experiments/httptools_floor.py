"""Experiment: the same relay behind a bare httptools HTTP/1.1 server instead of aiohttp.

What the gateway's CPU per token would be if its streaming routes were served by a
purpose-built server (as uvicorn does with httptools) rather than aiohttp's: a sketch
only, to put a number on that option. It handles just what the benchmark sends (one
request per connection or keep-alive, a body with Content-Length, chunked responses);
no key check, CORS, metrics, logging, timeouts, pipelining or error handling.

    python -m bench --gateway-prelude "exec(open('bench/experiments/httptools_floor.py').read())" \
        --sat-steps "" --split-tokens "" --profile off --results /tmp/floor --out /tmp/floor/out

bench/HISTORY.md has the result. Not part of the gateway: nothing imports this file.
"""

import asyncio
from http import HTTPStatus

import httptools
from aiohttp import web

import proxy.app
import proxy.server
from backend.wire import request_frame
from proxy.headers import client_response_headers, upstream_request_headers
from proxy.paths import upstream_path

_backend = []  # the backend `python -m proxy` builds, handed over by create_app


class ChunkedSink:
    """A `BodySink` writing chunked framing straight to the client's transport."""

    def __init__(self, conn: "Connection") -> None:
        self.conn = conn

    def write(self, chunk: bytes) -> bool:
        transport = self.conn.transport
        if transport.is_closing():
            return False
        if chunk:
            transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        return transport.get_write_buffer_size() < 64 * 1024

    async def drain(self) -> None:
        if self.conn.transport.is_closing():
            raise ConnectionResetError("the client left")
        if self.conn.writable is not None:
            await self.conn.writable


class Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport = None
        self.writable = None
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers = []
        self.body = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def pause_writing(self) -> None:
        self.writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        keep_alive = self.parser.should_keep_alive()
        url, headers, body = self.url, self.headers, b"".join(self.body)
        self._reset()
        asyncio.get_running_loop().create_task(self.respond(method, url.decode("latin-1"), headers, body, keep_alive))

    async def respond(self, method: str, url: str, headers: list, body: bytes, keep_alive: bool) -> None:
        raw_path, _, query = url.partition("?")
        if raw_path == "/health":
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return
        path = upstream_path(raw_path, query)
        upstream = await _backend[0].open(request_frame(method, path, upstream_request_headers(headers), body))
        try:
            head = [f"HTTP/1.1 {upstream.status} {HTTPStatus(upstream.status).phrase}\r\n"]
            head += [f"{name}: {value}\r\n" for name, value in client_response_headers(upstream.headers)]
            head.append("Transfer-Encoding: chunked\r\n\r\n" if keep_alive else "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            self.transport.write("".join(head).encode("latin-1"))
            await upstream.send_body(ChunkedSink(self))
            self.transport.write(b"0\r\n\r\n")
        finally:
            await upstream.aclose()
        if not keep_alive:
            self.transport.close()


def bare_app(backend, settings, loopback_only=False, **_ignored):
    _backend.append(backend)
    return web.Application()  # never served: serve() below replaces run_forever


def serve(app, host, port, on_ready):
    async def main():
        await asyncio.get_running_loop().create_server(Connection, host, port, backlog=proxy.server.LISTEN_BACKLOG)
        on_ready()  # python -m proxy's banner: it also settles the heap (gc.freeze, thresholds)
        await asyncio.Event().wait()

    proxy.server.new_event_loop().run_until_complete(main())


proxy.app.create_app = bare_app  # `python -m proxy` imports create_app when it starts
proxy.server.run_forever = serve  # `python -m proxy` serves the app with it
