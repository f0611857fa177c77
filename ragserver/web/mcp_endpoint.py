"""/mcp: the MCP server of mcp_tools.py, served by the same gunicorn workers as the pages.

The SDK's server is an ASGI app; these workers speak WSGI. The server runs stateless with
JSON responses: every POST is one self-contained exchange answered with one JSON body,
so nothing is kept between requests and any worker (or machine) can answer any request.
Per worker, on the first request to /mcp (after gunicorn forked, like the models), a
Bridge starts an event loop on its own thread, enters the SDK's session manager there
once (its lifespan), and hands each request over with a2wsgi. The view runs inside the
app's request handling, so ProxyFix has already put the client's address in the request,
and the rate limits see the same address as on every other page.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from contextlib import AbstractAsyncContextManager
from typing import Callable

from flask import Blueprint, Response, abort, current_app, jsonify, request

from .services import services

bp = Blueprint("mcp", __name__)

START_SECONDS = 30  # the session manager starts in milliseconds; more means something is wrong
# Loopback pages (a local MCP inspector) may call /mcp; other pages only from the origins
# in RAGSERVER_ALLOWED_ORIGINS.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")

_start_lock = threading.Lock()


class Bridge:
    """An ASGI app served to WSGI: an event loop on a daemon thread of this process, the
    app's lifespan entered there once, and a2wsgi handing each request to the loop."""

    def __init__(self, asgi_app, lifespan: Callable[[], AbstractAsyncContextManager]):
        from a2wsgi import ASGIMiddleware

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="mcp-loop",
                                        daemon=True)
        self._thread.start()
        started = concurrent.futures.Future()
        asyncio.run_coroutine_threadsafe(self._live(lifespan, started), self.loop)
        started.result(timeout=START_SECONDS)  # raises what the lifespan raised
        # wait_time: once the response is sent, how long a2wsgi waits for the request's
        # task to wind down before it cancels it.
        self.wsgi = ASGIMiddleware(asgi_app, wait_time=5.0, loop=self.loop)

    @staticmethod
    async def _live(lifespan, started: concurrent.futures.Future) -> None:
        """Enter the lifespan and stay in it for as long as the process lives (the thread
        is a daemon: a worker that exits takes it along)."""
        try:
            async with lifespan():
                started.set_result(None)
                await asyncio.Event().wait()
        except BaseException as error:
            if not started.done():
                started.set_exception(error)
            raise


def start_bridge(app) -> Bridge:
    """The app's MCP server on a running Bridge, started on first use."""
    svc = app.extensions["ragserver"]
    with _start_lock:
        if svc.mcp_bridge is None:
            from mcp.server.transport_security import TransportSecuritySettings

            from .mcp_tools import build_server

            server = build_server(app)
            # The SDK's Host/Origin checks need this server's public name, which nothing
            # here knows: the view checks Origin itself (see refuse_origin), and the SDK
            # still refuses a POST that is not application/json.
            security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
            server.streamable_http_app(stateless_http=True, json_response=True,
                                       transport_security=security,
                                       max_request_body_size=app.config["MAX_CONTENT_LENGTH"])
            manager = server.session_manager
            svc.mcp_bridge = Bridge(manager.handle_request, manager.run)
        return svc.mcp_bridge


def refuse_origin(origin: str, allowed: tuple[str, ...]) -> bool:
    """Whether a request from a page at `origin` is refused: any origin but loopback ones
    and the allowed ones. Browsers send Origin with every POST, so a page whose host name
    was made to point at this server (DNS rebinding) is refused; agents send none."""
    if not origin:
        return False
    origin = origin.rstrip("/")
    if origin in allowed:
        return False
    scheme, _, rest = origin.partition("://")
    host = rest.rsplit(":", 1)[0] if not rest.endswith("]") else rest
    return not (scheme in ("http", "https") and host in LOOPBACK_HOSTS)


# POST only: a stateless server has no stream for GET to open (the SDK would hold the
# request, and a worker thread, open forever) and no session for DELETE to end; the
# protocol lets a server answer both 405.
@bp.post("/mcp")
def endpoint():
    """MCP over streamable HTTP (stateless, JSON responses): POST a JSON-RPC message."""
    if refuse_origin(request.headers.get("Origin", ""), services().settings.origins):
        return jsonify(jsonrpc="2.0", id=None, error={
            "code": -32600, "message": "Requests from this page's origin are not allowed; "
                                       "add it to RAGSERVER_ALLOWED_ORIGINS."}), 403
    if (request.content_length or 0) > current_app.config["MAX_CONTENT_LENGTH"]:
        abort(413)
    bridge = start_bridge(current_app._get_current_object())
    return Response.from_app(bridge.wsgi, request.environ)
