"""/admin: the owner's report in the browser, behind RAGSERVER_ADMIN_TOKEN.

The page does not exist while the token is unset. The token travels only in a request
header (`Authorization: Bearer ...`) or in the sign-in form's POST body, never in a URL;
the form sets a cookie that holds an expiry and its HMAC under the token (so it is void
once the token changes) and is sent to /admin only. Every comparison is constant-time,
and sign-in attempts are rate-limited per address.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from flask import Blueprint, abort, jsonify, make_response, redirect, render_template, request, url_for

from ..activity import ActivityUnavailable, parse_age
from ..report import build_report
from .services import services

bp = Blueprint("admin", __name__)

COOKIE = "ragserver_admin"
SESSION_SECONDS = 12 * 3600
PERIODS = ("7d", "30d", "90d", "365d")


def _token() -> str:
    token = services().settings.admin_token.strip()
    if not token:
        abort(404)  # no token, no page: it does not exist
    return token


def _sign(token: str, expires: int) -> str:
    mac = hmac.new(token.encode(), f"ragserver admin {expires}".encode(), hashlib.sha256)
    return f"{expires}.{mac.hexdigest()}"


def _signed_in(token: str) -> bool:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return hmac.compare_digest(header[7:].strip().encode(), token.encode())
    cookie = request.cookies.get(COOKIE, "")
    expires, _, _ = cookie.partition(".")
    if not expires.isdigit() or int(expires) < time.time():
        return False
    return hmac.compare_digest(cookie.encode(), _sign(token, int(expires)).encode())


def _private(response):
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Robots-Tag"] = "noindex"
    return response


def _sign_in_page(message: str = "", status: int = 401):
    response = make_response(render_template("admin/sign_in.html", message=message), status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="ragserver admin"'
    return _private(response)


def _period() -> tuple[str, float]:
    since = request.args.get("since", "30d")
    try:
        return since, parse_age(since)
    except ValueError as error:
        abort(400, str(error))


def _report(seconds: float) -> dict:
    svc = services()
    if svc.activity is None:
        abort(404, "This server keeps no activity (RAGSERVER_ACTIVITY_DB is off).")
    try:
        return build_report(svc.activity, svc.embedder(), since=seconds,
                            min_score=svc.settings.min_score)
    except ActivityUnavailable as error:
        abort(503, str(error))


@bp.get("/admin")
def index():
    """The report, or the sign-in form."""
    token = _token()
    if not _signed_in(token):
        return _sign_in_page()
    since, seconds = _period()
    report = _report(seconds)
    return _private(make_response(render_template(
        "admin/index.html", report=report, since=since, periods=PERIODS)))


@bp.get("/admin/report.json")
def report_json():
    """The same report as JSON, for scripts holding the token (Authorization: Bearer)."""
    token = _token()
    if not _signed_in(token):
        response = jsonify(error="send the admin token as Authorization: Bearer TOKEN")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="ragserver admin"'
        return _private(response)
    _, seconds = _period()
    return _private(jsonify(_report(seconds)))


@bp.post("/admin")
def sign_in():
    """The sign-in form: the token in the POST body; a good one sets the session cookie."""
    token = _token()
    svc = services()
    wait = svc.admin_limit.take(request.remote_addr or "")
    if wait:
        return _sign_in_page(f"Too many attempts: wait {int(wait) + 1} seconds.", 429)
    given = request.form.get("token", "")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return _sign_in_page("That is not the admin token.")
    response = redirect(url_for("admin.index"), code=303)
    expires = int(time.time()) + SESSION_SECONDS
    response.set_cookie(COOKIE, _sign(token, expires), max_age=SESSION_SECONDS, path="/admin",
                        httponly=True, samesite="Strict", secure=request.is_secure)
    return _private(response)


@bp.post("/admin/sign-out")
def sign_out():
    _token()
    response = redirect(url_for("admin.index"), code=303)
    response.delete_cookie(COOKIE, path="/admin")
    return _private(response)
