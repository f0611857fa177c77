"""HTML pages and fragments: the article body's headings and content units, and its title."""

from __future__ import annotations

from ..records import Block, Document, SkipInput
from .post import file_url, make_document, take_title, title_from_source


def parse_html(html: str, *, source: str, base_url: str = "", url: str = "", title: str = "",
               date=None, tags=None) -> Document:
    """An HTML page or fragment as a Document (article body only)."""
    try:
        blocks = html_blocks(html)
    except UnicodeEncodeError:
        # BeautifulSoup checks short markup without tags for a file name given by mistake,
        # and that check cannot encode a lone surrogate (NDJSON can escape one: "\ud800").
        raise SkipInput("not Unicode text: an unpaired \\ud800-\\udfff escape") from None
    h1, rest = take_title(blocks)
    title = (title.strip() or html_title(html, h1) or title_from_source(source)).strip()
    if h1 and h1.strip().lower() == title.lower():
        blocks = rest
    return make_document(source=source, title=title, url=url or file_url(base_url, source),
                         date=date, tags=tags, blocks=blocks)


_DROP_TAGS = ("head", "title", "script", "style", "nav", "header", "footer", "aside", "form",
              "noscript", "template", "iframe", "svg", "button")
_BLOCK_TAGS = {"p": "paragraph", "li": "list_item", "pre": "code", "blockquote": "quote",
               "table": "table", "h1": "heading", "h2": "heading", "h3": "heading",
               "h4": "heading", "h5": "heading", "h6": "heading"}


def _in_block(el, root) -> bool:
    """Whether el is inside a block element, whose unit then holds its text."""
    return any(parent.name in _BLOCK_TAGS for parent in el.parents if parent is not root)


def html_blocks(html: str) -> list[Block]:
    """Headings and content units of an HTML document's article body."""
    from bs4 import BeautifulSoup, CData, NavigableString

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(list(_DROP_TAGS)):
        tag.decompose()
    root = soup.find("article") or soup.find("main") or soup.body or soup
    blocks: list[Block] = []
    # Text outside any block element (in <div>s, <dl>s, after <br>s) is content too.
    loose: list[str] = []

    def flush_loose():
        text = " ".join(" ".join(loose).split())
        if text:
            blocks.append(Block("paragraph", text))
        loose.clear()

    for el in root.descendants:
        if type(el) in (NavigableString, CData):
            if not _in_block(el, root):
                loose.append(str(el))
            continue
        # Only the outermost block element: <li><p>..</p></li> is one unit.
        if el.name not in _BLOCK_TAGS or _in_block(el, root):
            continue
        flush_loose()
        kind = _BLOCK_TAGS[el.name]
        if kind == "heading":
            text = " ".join(el.get_text(" ").split())
            if text:
                blocks.append(Block("heading", text, level=int(el.name[1]),
                                    anchor=str(el.get("id") or "")))
        elif kind == "code":
            code = el.get_text().strip("\n")
            if code.strip():
                blocks.append(Block("code", f"```\n{code}\n```"))
        elif kind == "table":
            # Rows and cells of this table only: a nested table's text is in its outer cell.
            rows = [" | ".join(" ".join(c.get_text(" ").split())
                               for c in tr.find_all(["th", "td"]) if c.find_parent("tr") is tr)
                    for tr in el.find_all("tr") if tr.find_parent("table") is el]
            body = "\n".join(r for r in rows if r.strip())
            if body:
                blocks.append(Block("table", body))
        else:
            text = " ".join(el.get_text(" ").split())
            if text:
                blocks.append(Block(kind, text))
    flush_loose()
    if not blocks:
        text = " ".join(root.get_text(" ").split())
        if text:
            blocks.append(Block("paragraph", text))
    return blocks


def html_title(html: str, heading: str | None = None) -> str:
    """og:title, else the article's first <h1> (given), else <title>, else ''."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    og = soup.find("meta", property="og:title")
    candidates = [og.get("content", "") if og else "", heading or "",
                  soup.title.get_text(" ") if soup.title else ""]
    for text in candidates:
        text = " ".join(str(text).split())
        if text:
            return text
    return ""
