"""Site search for readers: the /search page, /api/search, and related posts."""

from __future__ import annotations

import time

from flask import Blueprint, jsonify, render_template, request, url_for

from ..related import TOP, NotFound, map_neighbours, related_posts
from ..results import more_passage, related_post, search_hit
from ..retrieve import search_posts
from .limits import check_rate
from .services import services
from .validation import BadParameter, BadQuestion, check_question, read_mode, read_whole_number

bp = Blueprint("search", __name__)

MAX_RESULTS = 50
MAX_MORE = 5  # extra passages per post on request
PAGE_SIZE = 10
MAX_PAGE = 10  # search looks at the best 100 passages: deeper pages would be empty


def _allowed_origin() -> str | None:
    origin = request.headers.get("Origin", "")
    return origin if origin and origin.rstrip("/") in services().settings.origins else None


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


def _no_posts() -> bool:
    return not services().pool.has_database()


def _search(query: str, n: int, mode: str, offset: int = 0, per_post: int = 1):
    svc = services()
    embedder = svc.embedder()
    with svc.reading() as conn:
        return search_posts(conn, embedder, query, n, mode=mode, offset=offset,
                            per_post=per_post)


# -- JSON -------------------------------------------------------------------

@bp.route("/api/search", methods=["GET", "OPTIONS"])
def api_search():
    """?q=&n=&mode=&more= -> {"query", "mode", "results": [...], "took_ms"}."""
    if request.method == "OPTIONS":
        return "", 204
    started = time.perf_counter()
    try:
        query = check_question(request.args.get("q"), noun="search")
        mode = read_mode()
        n = read_whole_number("n", 10, 1, MAX_RESULTS)
        more = read_whole_number("more", 0, 0, MAX_MORE)
    except (BadQuestion, BadParameter) as error:
        return jsonify(error=str(error)), 400
    check_rate(services().search_limit, "searches")
    if _no_posts():
        return jsonify(error="no posts have been ingested yet"), 503
    results = []
    for best, *others in _search(query, n, mode, per_post=1 + more):
        result = search_hit(best, query)
        if more:
            result["more"] = [more_passage(h, query) for h in others]
        results.append(result)
    if not results:
        _record_empty(query, mode)
    return jsonify(query=query, mode=mode, results=results,
                   took_ms=round((time.perf_counter() - started) * 1000, 1))


@bp.route("/api/related", methods=["GET", "OPTIONS"])
def api_related():
    """?source= or ?url=, &n= -> {"source", "title", "url", "related": [...], "topic",
    "nearby": [...]}."""
    if request.method == "OPTIONS":
        return "", 204
    found, error, status = _related()
    if error:
        return jsonify(error=error), status
    post, topic = found["post"], found["topic"]
    return jsonify(source=post.source, title=post.title, url=post.url, related=found["related"],
                   topic=_topic_link(topic) if topic else None, nearby=found["nearby"])


def _topic_link(topic) -> dict:
    """A post's topic for /api/related: the link lights its posts up on this server's map
    (a path on this server, as the widget resolves it against its endpoint)."""
    return {"id": topic.id, "label": topic.label, "url": url_for("explore.index", topic=topic.id)}


def _related():
    """({"post", "related", "topic", "nearby"}, None, 200): the post, its related posts and
    the posts near it on the map that are not among them (related_post dicts), and its
    topic (None before topics were computed); or (None, what is wrong, 400 or 404)."""
    source = (request.args.get("source") or "").strip()
    url = (request.args.get("url") or "").strip()
    try:
        if not source and not url:
            raise BadParameter("give the post as ?source= (its source id) or ?url=")
        n = read_whole_number("n", 5, 1, TOP)
        check_rate(services().search_limit, "requests")
        if _no_posts():
            raise NotFound("no posts have been ingested yet")
        with services().reading() as conn:
            post, similar = related_posts(conn, source=source or None, url=url or None, n=n)
            topic, nearby = map_neighbours(conn, post, {r.source for r in similar})
    except (BadParameter, NotFound) as error:
        return None, str(error), 404 if isinstance(error, NotFound) else 400
    return {"post": post, "related": [related_post(r) for r in similar], "topic": topic,
            "nearby": [related_post(r) for r in nearby]}, None, 200


def _record_empty(query: str, mode: str) -> None:
    """A search that found nothing goes to the owner's report (no other search is kept)."""
    store = services().activity
    if store is not None:
        store.record_empty_search(query, mode)


def _other_places(group, query: str):
    """(the post as a search hit, other passages of it that sit under a different anchor)."""
    best, seen, others = group[0], {group[0].anchor}, []
    for hit in group[1:]:
        if hit.anchor not in seen:
            seen.add(hit.anchor)
            others.append(hit)
    return search_hit(best, query), others


# -- HTML -------------------------------------------------------------------

@bp.route("/related", methods=["GET", "OPTIONS"])
def related_fragment():
    """An HTML fragment listing a post's related posts, for a blog template to include."""
    if request.method == "OPTIONS":
        return "", 204
    found, error, status = _related()
    return render_template("search/_related.html", error=error, **(found or {})), status


@bp.get("/search")
def search_page():
    """Search as you type with htmx; a plain GET form without JavaScript."""
    query = request.args.get("q", "")
    context = {"query": query, "groups": [], "page": 1, "has_next": False, "error": None,
               "page_size": PAGE_SIZE}
    status = 200
    if query.strip():
        try:
            query = check_question(query, noun="search")
            mode = read_mode()
            page = read_whole_number("page", 1, 1, MAX_PAGE)
        except (BadQuestion, BadParameter) as error:
            context["error"], status = str(error), 400
        else:
            check_rate(services().search_limit, "searches")
            if _no_posts():
                context["error"], status = "No posts have been ingested yet.", 503
            else:
                groups = _search(query, PAGE_SIZE + 1, mode, offset=(page - 1) * PAGE_SIZE,
                                 per_post=3)
                if not groups and page == 1:
                    _record_empty(query, mode)
                context.update(query=query, page=page, mode=mode,
                               groups=[_other_places(g, query) for g in groups[:PAGE_SIZE]],
                               has_next=len(groups) > PAGE_SIZE and page < MAX_PAGE)
    template = "search/_results.html" if request.htmx else "search/index.html"
    return render_template(template, **context), status
