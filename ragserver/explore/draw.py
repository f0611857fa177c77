"""The map as a picture: SVG for the /explore page and `ragserver map`, PNG from the same
layout. Points are coloured by topic (or, along an axis, by where they fall)."""

from __future__ import annotations

import math
from html import escape

from ..render import safe_url
from ..storage import MapPoint, Topic

# Twenty colours, told apart on white (Tableau 20 with the pale halves darkened).
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#79706e", "#1f4e79", "#b85a0d", "#8c1d20", "#2f7f7a",
           "#2c6a2a", "#9a7d0a", "#6b3f66", "#c2185b", "#5d4037", "#37474f")
# Nine steps from one pole of an axis (blue) through grey to the other (orange).
AXIS_COLOURS = ("#2166ac", "#4393c3", "#92c5de", "#c9dbe6", "#bbbbbb", "#f4c9a8", "#f4a582",
                "#d6604d", "#b2182b")
SIZE = 800  # the map's side in SVG units
LEGEND_WIDTH = 260  # beside the map in a picture file


def colour(topic: int) -> str:
    """A topic's colour (topic ids count from 1)."""
    return PALETTE[(topic - 1) % len(PALETTE)]


def radius(n: int) -> float:
    """Smaller points for more posts, so 20,000 still show the shape."""
    return round(max(1.5, min(5.0, 250 / math.sqrt(max(n, 1)))), 2)


def axis_bucket(score: float, low: float, high: float) -> int:
    """Which of the AXIS_COLOURS a score gets, scaled by the largest score either way."""
    reach = max(abs(low), abs(high)) or 1.0
    step = (score / reach + 1) / 2 * (len(AXIS_COLOURS) - 1)
    return int(round(min(max(step, 0), len(AXIS_COLOURS) - 1)))


def _xy(value: float) -> str:
    return f"{value * SIZE:.1f}"


def map_svg(points: list[MapPoint], topics: list[Topic], *, marked: set[int] | None = None,
            scores: dict[int, float] | None = None, links: bool = True,
            legend: bool = False, caption: str = "") -> str:
    """The map as an SVG document or element.

    marked: post ids to light up (the others fade); scores: axis scores by post id, which
    colour the points instead of their topics; links: each point links to its post
    (when its URL is http(s) or relative: never javascript: and the like);
    legend: a legend of topics beside the map (for a picture file, where no page lists
    them).
    """
    names = {t.id: t.label for t in topics}
    r = radius(len(points))
    width = SIZE + (LEGEND_WIDTH if legend else 0)
    height = max(SIZE, 40 + 22 * len(topics)) if legend else SIZE
    classes = "ragserver-map" + (" filtering" if marked else "")
    label = caption or f"Map of {len(points)} posts coloured by topic"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
           f'class="{classes}" role="group" aria-label="{escape(label)}">',
           f'<rect width="{width}" height="{height}" fill="#ffffff"/>']
    low = min(scores.values(), default=0.0) if scores else 0.0
    high = max(scores.values(), default=0.0) if scores else 0.0
    for point in points:
        fill = (AXIS_COLOURS[axis_bucket(scores.get(point.post_id, 0.0), low, high)]
                if scores else colour(point.topic))
        topic = names.get(point.topic, "")
        tip = f"{point.title} ({topic})" if topic else point.title
        mark = " match" if marked and point.post_id in marked else ""
        circle = (f'<circle cx="{_xy(point.x)}" cy="{_xy(point.y)}" r="{r}" fill="{fill}">'
                  f"<title>{escape(tip)}</title></circle>")
        attributes = (f'class="point{mark}" data-id="{point.post_id}" '
                      f'data-source="{escape(point.source)}" data-topic="{point.topic}"')
        href = safe_url(point.url) if links else ""
        if href:
            out.append(f'<a href="{escape(href)}" {attributes}>{circle}</a>')
        else:
            out.append(f'<g {attributes}>{circle}</g>')
    if legend:
        for n, topic in enumerate(topics):
            y = 30 + 22 * n
            out.append(f'<circle cx="{SIZE + 16}" cy="{y - 5}" r="6" fill="{colour(topic.id)}"/>'
                       f'<text x="{SIZE + 28}" y="{y}" font-family="sans-serif" font-size="14" '
                       f'fill="#222222">{escape(_short(topic.label))}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _short(text: str, n: int = 30) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def map_png(points: list[MapPoint], topics: list[Topic], path, *, scale: float = 1.5) -> None:
    """The same picture as map_svg(legend=True), drawn with Pillow into a PNG file."""
    from PIL import Image, ImageDraw, ImageFont

    width = round((SIZE + LEGEND_WIDTH) * scale)
    height = round(max(SIZE, 40 + 22 * len(topics)) * scale)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    r = radius(len(points)) * scale
    for point in points:
        x, y = point.x * SIZE * scale, point.y * SIZE * scale
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour(point.topic))
    font = ImageFont.load_default(size=round(14 * scale))
    for n, topic in enumerate(topics):
        y = (30 + 22 * n) * scale
        cx = (SIZE + 16) * scale
        dot = 6 * scale
        draw.ellipse((cx - dot, y - 5 * scale - dot, cx + dot, y - 5 * scale + dot),
                     fill=colour(topic.id))
        draw.text(((SIZE + 28) * scale, y), _short(topic.label), fill="#222222", font=font,
                  anchor="ls")
    image.save(path, format="PNG")
