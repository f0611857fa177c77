"""/api/search: hybrid, vector or keyword search over the posts, as JSON."""

from __future__ import annotations

import time

from flask import Blueprint, jsonify, request

from ..render import highlight
from ..retrieve import MODES, search_posts
from .chat import BadQuestion, check_question
from .services import services

bp = Blueprint("search", __name__)

MAX_RESULTS = 50


def _allowed_origin() -> str | None:
    origin = request.headers.get("Origin", "")
    allowed = {o.strip().rstrip("/") for o in services().settings.allowed_origins.split(",")
               if o.strip()}
    return origin if origin and origin.rstrip("/") in allowed else None


@bp.after_request
def cors(response):
    """CORS headers only for origins listed in RAGSERVER_ALLOWED_ORIGINS."""
    origin = _allowed_origin()
    response.headers.add("Vary", "Origin")
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = "GET, OPTIONS"
        response.headers["Access-Control-Max-Age"] = "600"
    return response


@bp.route("/api/search", methods=["GET", "OPTIONS"])
def api_search():
    """?q=&n=&mode= -> {"query", "mode", "results": [...], "took_ms"}."""
    if request.method == "OPTIONS":
        return "", 204
    started = time.perf_counter()
    try:
        query = check_question(request.args.get("q"), noun="search")
    except BadQuestion as error:
        return jsonify(error=str(error)), 400
    mode = request.args.get("mode", "hybrid")
    if mode not in MODES:
        return jsonify(error=f"mode must be one of {', '.join(MODES)}"), 400
    try:
        n = int(request.args.get("n", 10))
    except ValueError:
        return jsonify(error="n must be a whole number"), 400
    if not 1 <= n <= MAX_RESULTS:
        return jsonify(error=f"n must be between 1 and {MAX_RESULTS}"), 400
    svc = services()
    if not svc.settings.db_path.exists():
        return jsonify(error="no posts have been ingested yet"), 503
    hits = search_posts(svc.connection(), svc.embedder(), query, n, mode=mode)
    results = [{"source": h.source, "title": h.title, "url": h.url, "anchor": h.anchor,
                "date": h.date, "snippet": str(highlight(h.text, query)), "score": round(h.score, 4)}
               for h in hits]
    return jsonify(query=query, mode=mode, results=results,
                   took_ms=round((time.perf_counter() - started) * 1000, 1))
