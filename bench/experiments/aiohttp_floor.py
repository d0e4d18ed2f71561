"""Experiment: the floor of an aiohttp server relaying through the gateway's own relay.

One handler: no middlewares, no metrics or access log, no CORS, no key check, no
timeouts. Whatever CPU per token this still costs against nginx is aiohttp's server (and
CPython) per request, not the gateway's features. It replaces the gateway's app in the
bench's gateway process:

    python -m bench --gateway-prelude "exec(open('bench/experiments/aiohttp_floor.py').read())" \
        --sat-steps "" --split-tokens "" --profile off --results /tmp/floor --out /tmp/floor/out

Set `FLOOR = "server"` first (`--gateway-prelude "FLOOR = 'server'; exec(...)"`) to serve
the handler from aiohttp's low-level `web.Server` instead of a `web.Application` (no
router, no middleware chain, no signals). bench/HISTORY.md has the results. Not part of
the gateway: nothing imports this file.
"""

import asyncio

from aiohttp import web

import proxy.app
import proxy.server
from backend.wire import request_frame
from proxy.forward import ClientBody
from proxy.headers import client_response_headers, upstream_request_headers
from proxy.paths import upstream_path

_backend = []  # the backend `python -m proxy` builds, handed over by create_app


async def relay(request: web.Request) -> web.StreamResponse:
    if request.path == "/health":
        return web.json_response({"status": "ok"})
    path = upstream_path(request.rel_url.raw_path, request.rel_url.raw_query_string)
    body = await request.read()
    upstream = await _backend[0].open(request_frame(request.method, path, upstream_request_headers(request.headers.items()), body))
    try:
        response = web.StreamResponse(status=upstream.status)
        for name, value in client_response_headers(upstream.headers):
            response.headers.add(name, value)
        await response.prepare(request)
        await upstream.send_body(ClientBody(request, response))
        await response.write_eof()
        return response
    finally:
        await upstream.aclose()


def bare_app(backend, settings, loopback_only=False, **_ignored):
    _backend.append(backend)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", relay)
    return app


def serve_low_level(app, host, port, on_ready):
    async def main():
        runner = web.ServerRunner(web.Server(relay, handler_cancellation=True, access_log=None))
        await runner.setup()
        await web.TCPSite(runner, host, port, backlog=proxy.server.LISTEN_BACKLOG).start()
        on_ready()  # python -m proxy's banner: it also settles the heap (gc.freeze, thresholds)
        await asyncio.Event().wait()

    proxy.server.new_event_loop().run_until_complete(main())


proxy.app.create_app = bare_app  # `python -m proxy` imports create_app when it starts
if globals().get("FLOOR") == "server":
    proxy.server.run_forever = serve_low_level  # `python -m proxy` serves the app with it
