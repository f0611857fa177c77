"""Security headers on every response: a Content-Security-Policy that allows only this server."""

from __future__ import annotations

from flask import current_app

# Pages load their scripts, styles and htmx requests from this server only: no inline
# script or style (htmx runs with allowEval off and without its injected indicator
# style), no images from elsewhere (an answer cannot make the page fetch anything).
POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
          "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
          "frame-ancestors {ancestors}")


def content_security_policy(origins) -> str:
    """The policy; the blog's origins may frame the pages (say, the chat in an iframe)."""
    return POLICY.format(ancestors=" ".join(["'self'", *origins]))


def add_security_headers(response):
    """CSP, no MIME sniffing, and no full URLs (with search queries) sent to other sites."""
    settings = current_app.config["RAGSERVER"]
    response.headers.setdefault("Content-Security-Policy",
                                content_security_policy(settings.origins))
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "strict-origin-when-cross-origin")
    return response
