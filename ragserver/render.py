"""Markdown from posts and from the model, rendered inert: no raw HTML, safe links only."""

from __future__ import annotations

import re

from markdown_it import MarkdownIt
from markupsafe import Markup, escape

from .terms import search_terms

_SAFE_LINK = re.compile(r"^(https?://|/|#|\./|\.\./|[^:/?#]+(/|$|\?|#))", re.IGNORECASE)


def _validate_link(url: str) -> bool:
    """Only http(s) and relative links; javascript:, data:, vbscript:, file: ... are refused."""
    url = url.strip()
    if re.match(r"^[a-z][a-z0-9+.-]*:", url, re.IGNORECASE):
        return url.lower().startswith(("http://", "https://"))
    return bool(_SAFE_LINK.match(url)) or url == ""


# No images: an answer (or a post quoted in it) must not make the reader's browser fetch
# anything by itself; ![alt](url) stays text.
_md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table").disable("image")
_md.validateLink = _validate_link


def render_markdown(text: str) -> Markup:
    """HTML for Markdown text with raw HTML escaped and unsafe links left as plain text."""
    return Markup(_md.render(text or ""))


def highlight_citations(html: Markup, count: int, turn: str) -> Markup:
    """Turn [n] citations (n within the sources) into links to the numbered source."""
    def link(match: re.Match) -> str:
        n = int(match.group(1))
        if 1 <= n <= count:
            return f'<a class="cite" href="#{escape(turn)}-src-{n}">[{n}]</a>'
        return match.group(0)

    # Only outside tags: citations sit in text nodes, and [n] never appears inside markup
    # that markdown-it generates (attribute values are escaped, brackets stay literal).
    parts = re.split(r"(<[^>]+>)", str(html))
    return Markup("".join(p if p.startswith("<") else re.sub(r"\[(\d{1,3})\]", link, p)
                          for p in parts))


# Private-use characters that mark where an unsupported sentence ends, or an unsupported
# code block stands, while the Markdown renders; then they become the marks.
_SENTENCE_MARK, _CODE_MARK = "\ue000", "\ue001"
UNSUPPORTED_SENTENCE = ('<span class="unsupported" title="Not found in the sources: check it '
                        'before you rely on it">not in the sources</span>')
UNSUPPORTED_CODE = ('<p class="unsupported-code">⚠ This code is not in the sources: it may be '
                    'invented. Check it before you run it.</p>')
CITES_NOTHING = ('<p class="cites-nothing">This answer cites none of the sources below: check '
                 'it against them.</p>')


def checked_answer(text: str, segments: list[dict], count: int, turn: str,
                   answered: bool = True) -> Markup:
    """A checked answer as HTML: Markdown rendered inert, [n] linked to its source, a mark
    after each sentence and under each code block the sources do not support, and a note
    when it cites nothing."""
    marked = text.replace(_SENTENCE_MARK, "").replace(_CODE_MARK, "")
    cursor = 0
    for segment in segments:
        found = marked.find(segment["text"], cursor)
        if found < 0:
            continue
        end = found + len(segment["text"])
        if segment["supported"] is False:
            mark = f"\n\n{_CODE_MARK}\n\n" if segment["kind"] == "code" else _SENTENCE_MARK
            marked = marked[:end] + mark + marked[end:]
            end += len(mark)
        cursor = end
    html = str(highlight_citations(render_markdown(marked), count, turn))
    html = html.replace(f"<p>{_CODE_MARK}</p>", UNSUPPORTED_CODE)
    html = html.replace(_CODE_MARK, "").replace(_SENTENCE_MARK, UNSUPPORTED_SENTENCE)
    if answered and segments and not re.search(r'class="cite"', html):
        html += CITES_NOTHING
    return Markup(html)


def snippet(text: str, length: int = 240) -> str:
    """A passage as one line of plain text: code fences dropped, whitespace collapsed."""
    lines = [line for line in (text or "").split("\n") if not line.lstrip().startswith("```")]
    flat = " ".join(" ".join(lines).split())
    return flat if len(flat) <= length else flat[:length].rsplit(" ", 1)[0] + "…"


def safe_url(url: str) -> str:
    """The URL if it is http(s) or relative, else '' (javascript:, data: ... never reach a page)."""
    return url if url and _validate_link(url) else ""


def _term_pattern(terms: list[str]) -> re.Pattern | None:
    """Words that begin with a search term, since keyword search stems ("mode" finds "modes");
    a one-letter term only as a word of its own, or it would mark every word it begins, and
    not as the end of "it's" or "don't", which a reader sees as one word."""
    words = [re.escape(t) + r"\w*" if len(t) > 1 else r"(?<!\w['’])" + re.escape(t) + r"\b"
             for t in terms]
    return re.compile(r"\b(?:" + "|".join(words) + ")", re.IGNORECASE) if words else None


def highlight(text: str, query: str, length: int = 240) -> Markup:
    """A plain-text window of the passage around the first search term, terms in <mark>.

    The terms are those keyword search looks for (terms.search_terms). The text is escaped
    first; only <mark> tags are added, so post content stays inert.
    """
    flat = snippet(text, 10_000)
    pattern = _term_pattern(search_terms(query))
    first = pattern.search(flat) if pattern else None
    start = max(0, first.start() - length // 3) if first else 0
    window = flat[start:start + length]
    if start > 0:
        window = "…" + window.split(" ", 1)[-1]
    if start + length < len(flat):
        window = window.rsplit(" ", 1)[0] + "…"
    if pattern is None:
        return Markup(escape(window))
    pieces, last = [], 0
    for match in pattern.finditer(window):
        pieces.append(escape(window[last:match.start()]))
        pieces.append(Markup("<mark>") + escape(match.group(0)) + Markup("</mark>"))
        last = match.end()
    pieces.append(escape(window[last:]))
    return Markup("").join(pieces)
