"""Results as JSON-ready dicts: one shape per kind, for the API, the CLI and the templates.

The keys are a contract (README.md, docs/searching.md, docs/site-search.md): add to them,
never rename one.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

from .render import highlight

if TYPE_CHECKING:
    from .answer import Source
    from .storage import Hit, RelatedPost, StoredPassage


def search_hit(hit: Hit, query: str) -> dict:
    """A post found by a search, shown by its best passage with the query's words marked."""
    # The snippet stays Markup (escaped text and <mark>): JSON writes it as the string it
    # is, and a template shows it as the HTML it is.
    return {"source": hit.source, "title": hit.title, "url": hit.url, "anchor": hit.anchor,
            "date": hit.date, "snippet": highlight(hit.text, query),
            "score": round(hit.score, 4)}


def more_passage(hit: Hit, query: str) -> dict:
    """Another passage of a found post (the API's ?more=): where it sits, and its snippet."""
    return {"anchor": hit.anchor, "headings": list(hit.heading_path),
            "snippet": highlight(hit.text, query), "score": round(hit.score, 4)}


def ranked_passage(hit: Hit) -> dict:
    """A passage as `ragserver search` ranks it: whole text, link, and both scores."""
    similarity = None if hit.similarity is None else round(hit.similarity, 4)
    return {"source": hit.source, "title": hit.title, "url": hit.url, "anchor": hit.anchor,
            "link": hit.link, "headings": list(hit.heading_path), "text": hit.text,
            "score": round(hit.score, 4), "similarity": similarity}


def related_post(post: RelatedPost) -> dict:
    """A post similar to another one."""
    return {"source": post.source, "title": post.title, "url": post.url, "date": post.date,
            "score": round(post.score, 4)}


def answer_source(source: Source) -> dict:
    """A numbered passage an answer was given, as the `sources` event lists it."""
    return {**asdict(source), "headings": list(source.headings), "link": source.link,
            "score": round(source.score, 4)}


def post_text(title: str, passages: list[StoredPassage]) -> str:
    """A post's text rebuilt from its passages as Markdown: the title, then each passage in
    order under the headings it sits beneath (the words are the post's; the layout is
    approximate, as a passage keeps no blank lines of the page it came from)."""
    lines, current = [f"# {title}"] if title else [], ()
    for passage in sorted(passages, key=lambda p: p.position):
        path = tuple(passage.heading_path)
        if path != current:
            shared = 0
            while shared < min(len(path), len(current)) and path[shared] == current[shared]:
                shared += 1
            lines += ["#" * (depth + 2) + " " + path[depth] for depth in range(shared, len(path))]
            current = path
        lines.append(passage.text)
    return "\n\n".join(lines)
