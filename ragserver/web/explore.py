"""The blog's shape for readers: the /explore page (a map of every post, coloured by topic or
along an axis between two ideas, where a search lights posts up) and /api/explore.

The map is read and drawn once per version of the database (Storage.map_version): at
20,000 posts reading and drawing it takes about 0.3 s, and most requests show it
as it was drawn.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field

from flask import Blueprint, Response, current_app, jsonify, render_template, request
from markupsafe import Markup

from .. import explore
from ..explore import draw
from ..retrieve import search_posts
from ..storage import MapPoint
from .limits import check_rate
from .search import cors
from .services import services
from .validation import (BadParameter, BadQuestion, check_axis, check_question,
                         read_whole_number)

bp = Blueprint("explore", __name__)
bp.after_request(cors)

MATCHES = 20  # posts a search lights up (explore.js asks /api/search for as many)
CENTRAL = 3  # posts listed under each topic
EXTREMES = 10  # posts listed at each end of an axis
BINS = 20  # bars of an axis's histogram
NO_MAP = ("topics are computed at the end of an ingest (or by `ragserver topics`), and "
          "none has been computed for these posts yet")


@dataclass
class DrawnMap:
    """The map of one version of the database, read and drawn once."""
    version: str
    shape: explore.Shape
    svg: Markup  # coloured by topic, nothing marked
    by_id: dict[int, MapPoint]
    id_of: dict[str, int]  # source -> post id
    members: dict[int, list[MapPoint]]  # topic id -> its posts, the most central first
    page: dict[str, bytes] = field(default_factory=dict)  # /explore as it is, by encoding
    json: dict[str, bytes] = field(default_factory=dict)  # /api/explore as it is, by encoding


def drawn_map(conn) -> DrawnMap:
    """The map as the database has it now: the one drawn before, unless the posts or the
    map changed since."""
    svc = services()
    version = conn.map_version()
    drawn = svc.drawn_map
    if drawn is None or drawn.version != version:
        shape = explore.load(conn)
        members: dict[int, list[MapPoint]] = {}
        for point in sorted(shape.points, key=lambda p: (-p.centrality, p.post_id)):
            members.setdefault(point.topic, []).append(point)
        drawn = DrawnMap(version, shape, Markup(draw.map_svg(shape.points, shape.topics)),
                         {p.post_id: p for p in shape.points},
                         {p.source: p.post_id for p in shape.points}, members)
        svc.drawn_map = drawn  # requests that drew at once each keep theirs; the last stays
    return drawn


def _read_sides() -> tuple[str, str] | None:
    """The two ideas of ?axis=A,B, or None when there is no axis."""
    text = request.args.get("axis", "")
    return check_axis(text) if text.strip() else None


def _read_query() -> str:
    """The ?q= search, or "" when there is none."""
    text = request.args.get("q", "")
    return check_question(text, noun="search") if text.strip() else ""


def _read_topic(drawn: DrawnMap) -> int | None:
    """The ?topic= to light up, or None."""
    if not request.args.get("topic", "").strip():
        return None
    ids = [t.id for t in drawn.shape.topics]
    topic = read_whole_number("topic", 0, min(ids), max(ids))
    if topic not in ids:
        raise BadParameter(f"there is no topic {topic}")
    return topic


def _matches(conn, query: str, drawn: DrawnMap) -> list[int]:
    """Post ids of the posts a hybrid search finds, best first."""
    found = search_posts(conn, services().embedder(), query, MATCHES)
    return [drawn.id_of[group[0].source] for group in found if group[0].source in drawn.id_of]


def _extremes(axis: explore.Axis, drawn: DrawnMap) -> tuple[list, list]:
    """([(point, score)] most like the axis's first idea, [...] most like its second)."""
    ranked = [(drawn.by_id[pid], score) for pid, score in axis.ranked() if pid in drawn.by_id]
    return ranked[:EXTREMES], ranked[::-1][:EXTREMES]


def _axis_view(axis: explore.Axis, drawn: DrawnMap) -> dict:
    """What the page shows of an axis: its ends, a histogram and the posts at each end."""
    counts, low, high = axis.histogram(BINS)
    step = ((high if high > low else low + 1) - low) / BINS
    bars = [{"count": count, "from": low + i * step, "to": low + (i + 1) * step,
             "colour": draw.AXIS_COLOURS[draw.axis_bucket(low + (i + 0.5) * step, low, high)]}
            for i, count in enumerate(counts)]
    first, second = _extremes(axis, drawn)
    return {"start": axis.start, "to": axis.to, "bars": bars, "tallest": max(counts) or 1,
            "low": low, "high": high, "first": first, "second": second}


def _send(make, status: int = 200, mimetype: str = "text/html",
          cache: dict[str, bytes] | None = None) -> Response:
    """The text make() returns, gzipped when the client takes it: at 20,000 posts the map
    makes megabytes, which shrink about five times. With `cache`, made once and kept there
    for the requests after (and then compressed harder)."""
    encoding = "gzip" if request.accept_encodings["gzip"] else "identity"
    body = cache.get(encoding) if cache is not None else None
    if body is None:
        body = make().encode()
        if encoding == "gzip":
            body = gzip.compress(body, 1 if cache is None else 6)
        if cache is not None:
            cache[encoding] = body
    response = Response(body, status, mimetype=mimetype)
    response.vary.add("Accept-Encoding")
    if encoding == "gzip":
        response.content_encoding = "gzip"
    return response


# -- HTML -------------------------------------------------------------------

@bp.get("/explore")
def index():
    """The map; ?q= lights up the posts a search finds, ?topic= one topic's posts, and
    ?axis=A,B colours the posts from idea A to idea B. A plain GET form (explore.js adds
    search as you type, and tooltips)."""
    context = {"query": request.args.get("q", ""), "axis_text": request.args.get("axis", ""),
               "error": None, "drawn": None, "posts": services().pool.has_database(),
               "colour": draw.colour, "axis_colours": draw.AXIS_COLOURS, "matches": None,
               "topic": None, "axis": None, "central": CENTRAL, "match_limit": MATCHES}
    status, query, sides, axis = 200, "", None, None
    try:
        query, sides = _read_query(), _read_sides()
    except BadQuestion as error:
        context["error"], status = str(error), 400
    if not context["posts"]:
        return render_template("explore/index.html", **context), status
    svc = services()
    with svc.reading() as conn:
        drawn = context["drawn"] = drawn_map(conn)
        if not drawn.shape.points:
            return render_template("explore/index.html", **context, no_map=NO_MAP), status
        try:
            context["topic"] = _read_topic(drawn)
        except BadParameter as error:
            context["error"], status = str(error), 400
        if query or sides:
            check_rate(svc.search_limit, "searches")
        if query:
            context["matches"] = [drawn.by_id[pid] for pid in _matches(conn, query, drawn)]
        if sides:
            axis = explore.axis(conn, svc.embedder(), *sides)
    if status == 200 and not query and not sides and context["topic"] is None:
        # The page everyone sees alike (even who sent ?q=%20): made once per map.
        context.update(query="", axis_text="")
        return _send(lambda: render_template("explore/index.html", **context, svg=drawn.svg),
                     cache=drawn.page)
    marked = None
    if context["matches"] is not None:
        marked = {point.post_id for point in context["matches"]}
    elif context["topic"] is not None:
        marked = {point.post_id for point in drawn.members.get(context["topic"], [])}
    if axis is not None:
        context["axis"] = _axis_view(axis, drawn)
    svg = drawn.svg if not marked and axis is None else Markup(draw.map_svg(
        drawn.shape.points, drawn.shape.topics, marked=marked,
        scores=axis.scores if axis else None,
        caption=f"Map of {len(drawn.shape.points)} posts coloured from “{axis.start}” to "
                f"“{axis.to}”" if axis else ""))
    return _send(lambda: render_template("explore/index.html", **context, svg=svg), status)


# -- JSON -------------------------------------------------------------------

@bp.route("/api/explore", methods=["GET", "OPTIONS"])
def api_explore():
    """?q=&axis=A,B -> {"posts": [...], "topics": [...], "built_at", "labels"}; an axis adds
    each post's "axis" score and "axis": {"from", "to", "histogram", "low", "high"}, a search
    "matches": [source, ...] (best first)."""
    if request.method == "OPTIONS":
        return "", 204
    try:
        query, sides = _read_query(), _read_sides()
    except BadQuestion as error:
        return jsonify(error=str(error)), 400
    svc = services()
    check_rate(svc.search_limit, "requests")
    if not svc.pool.has_database():
        return jsonify(error="no posts have been ingested yet"), 503
    with svc.reading() as conn:
        drawn = drawn_map(conn)
        if not drawn.shape.points:
            return jsonify(error=f"no map yet: {NO_MAP}"), 503
        matches = _matches(conn, query, drawn) if query else None
        axis = explore.axis(conn, svc.embedder(), *sides) if sides else None

    def body() -> str:
        shape = drawn.shape
        scores = axis.scores if axis else {}
        data = {"built_at": shape.state.get("built_at"), "labels": shape.state.get("labels"),
                "topics": [explore.topic_json(shape, t, CENTRAL) for t in shape.topics],
                "posts": [explore.point_json(p, scores.get(p.post_id)) for p in shape.points]}
        if matches is not None:
            data["matches"] = [drawn.by_id[pid].source for pid in matches]
        if axis:
            counts, low, high = axis.histogram(BINS)
            first, second = _extremes(axis, drawn)
            data["axis"] = {"from": axis.start, "to": axis.to,
                            "histogram": {"counts": counts, "min": round(low, 4),
                                          "max": round(high, 4)},
                            "low": [explore.point_json(p, s) for p, s in first],
                            "high": [explore.point_json(p, s) for p, s in second]}
        return current_app.json.dumps(data, separators=(",", ":"))  # as jsonify writes it

    return _send(body, mimetype="application/json",
                 cache=drawn.json if matches is None and axis is None else None)
