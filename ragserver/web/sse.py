"""Server-sent events: framing one event, and the response that streams them."""

from __future__ import annotations

from flask import Response, stream_with_context


def sse(event: str, data: str) -> str:
    """One server-sent event; multi-line data becomes several data: lines."""
    lines = data.split("\n")
    return f"event: {event}\n" + "".join(f"data: {line}\n" for line in lines) + "\n"


def event_stream(events) -> Response:
    """A text/event-stream response that proxies must not buffer or cache."""
    return Response(stream_with_context(events), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
