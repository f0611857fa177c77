"""Turn a post into passages. Pure functions: no I/O, no models.

A post is first parsed into blocks (headings and content units: paragraphs,
list items, code blocks, tables, quotes). Units under one heading become
passages: tiny ones are merged with their neighbours, over-long ones are split
at sentence (or line) boundaries so that prefix + context + text fits the
embedding model's window, counted with the model's own tokenizer.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Callable, Iterable

from markdown_it import MarkdownIt

CountTokens = Callable[[list[str]], list[int]]

# Bump when the way passages are cut changes, so unchanged posts get re-chunked.
CHUNKER_VERSION = "2"
MIN_TOKENS = 32
MAX_CONTEXT_CHARS = 200


@dataclass(frozen=True)
class Block:
    kind: str  # heading, paragraph, list_item, code, table, quote
    text: str
    level: int = 0
    anchor: str = ""  # explicit id for headings, when the source has one


@dataclass(frozen=True)
class Passage:
    position: int
    heading_path: tuple[str, ...]
    anchor: str
    text: str


# -- Markdown ---------------------------------------------------------------

# The commonmark preset stops at 20 levels of nesting and silently drops anything deeper
# (a list nested ten deep loses its tail); 100 is markdown-it's default preset and still
# far from Python's recursion limit.
_md = MarkdownIt("commonmark", {"html": True, "maxNesting": 100}).enable("table")


def _inline_text(token) -> str:
    parts = []
    for child in token.children or []:
        if child.type in ("text", "html_inline"):
            parts.append(child.content if child.type == "text" else "")
        elif child.type == "code_inline":
            parts.append(f"`{child.content}`")
        elif child.type == "softbreak":
            parts.append(" ")
        elif child.type == "hardbreak":
            parts.append("\n")
        elif child.type == "image":
            parts.append(child.content or "")
    return "".join(parts).strip()


def _html_text(html: str) -> str:
    from bs4 import BeautifulSoup

    return " ".join(BeautifulSoup(html, "html.parser").get_text(" ").split())


def markdown_blocks(text: str) -> list[Block]:
    """Parse Markdown into headings and content units with markdown-it-py."""
    tokens = _md.parse(text)
    blocks: list[Block] = []
    item_depth = 0
    item_lines: list[str] = []
    quote_depth = 0
    table_rows: list[list[str]] | None = None
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        t = tok.type
        if t == "heading_open":
            blocks.append(Block("heading", _inline_text(tokens[i + 1]), level=int(tok.tag[1])))
            i += 3
            continue
        if t == "list_item_open":
            if item_depth > 0 and item_lines is not None:
                item_lines.append("")  # nested items start on a line of their own
            item_depth += 1
        elif t == "list_item_close":
            item_depth -= 1
            if item_depth == 0:
                body = "\n".join(line for line in item_lines if line).strip()
                if body:
                    blocks.append(Block("list_item", body))
                item_lines = []
        elif t == "blockquote_open":
            quote_depth += 1
        elif t == "blockquote_close":
            quote_depth -= 1
        elif t == "table_open":
            table_rows = []
        elif t == "tr_open" and table_rows is not None:
            table_rows.append([])
        elif t == "inline" and table_rows is not None:
            table_rows[-1].append(_inline_text(tok))
        elif t == "table_close":
            body = "\n".join(" | ".join(row) for row in table_rows or [])
            if body.strip():
                blocks.append(Block("table", body))
            table_rows = None
        elif t == "inline":
            content = _inline_text(tok)
            if item_depth > 0:
                prefix = "  " * (item_depth - 1) + ("- " if item_depth > 1 else "")
                item_lines.append(prefix + content)
            elif content:
                blocks.append(Block("quote" if quote_depth else "paragraph", content))
        elif t in ("fence", "code_block"):
            code = tok.content.rstrip("\n")
            if code.strip():
                if item_depth > 0:
                    item_lines.append(code)
                else:
                    lang = tok.info.split()[0] if tok.info.strip() else ""
                    blocks.append(Block("code", f"```{lang}\n{code}\n```"))
        elif t == "html_block":
            content = _html_text(tok.content)
            if content:
                if item_depth > 0:
                    item_lines.append(content)
                else:
                    blocks.append(Block("paragraph", content))
        i += 1
    return blocks


# -- HTML -------------------------------------------------------------------

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


# -- anchors and titles -----------------------------------------------------

def slugify(text: str) -> str:
    """GitHub-style heading slug: lower case, punctuation dropped, spaces to hyphens."""
    text = unicodedata.normalize("NFKC", text).lower().strip()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def take_title(blocks: list[Block]) -> tuple[str | None, list[Block]]:
    """Split off a leading H1 as the title (only if it comes before any content)."""
    for index, block in enumerate(blocks):
        if block.kind == "heading" and block.level == 1:
            return block.text, blocks[:index] + blocks[index + 1:]
        if block.kind != "heading":
            break
    return None, blocks


def context_text(title: str, heading_path: Iterable[str]) -> str:
    """The title and heading path embedded with each passage (not stored with it)."""
    text = " > ".join([title, *heading_path]) if title else " > ".join(heading_path)
    return text[:MAX_CONTEXT_CHARS]


def embedding_text(title: str, heading_path: Iterable[str], text: str) -> str:
    """What is embedded for a passage: context, blank line, clean passage text."""
    context = context_text(title, heading_path)
    return f"{context}\n\n{text}" if context else text


# -- splitting and merging --------------------------------------------------

_SENTENCE_END = re.compile(r"(?:(?<=[.!?。])|(?<=[.!?。][\"')\]]))\s+")


def split_sentences(text: str) -> list[str]:
    """Sentences (or lines, for multi-line text such as code), keeping the text intact."""
    if "\n" in text.strip():
        return [line for line in text.split("\n")]
    return [s for s in _SENTENCE_END.split(text) if s]


def _hard_split(text: str, budget: int, count_tokens: CountTokens) -> list[str]:
    """Split text with no usable boundary: by words, then by characters."""
    words = text.split(" ")
    if len(words) > 1:
        return _pack(words, " ", budget, count_tokens)
    pieces, start = [], 0
    while start < len(text):
        end = len(text)
        while end > start + 1 and count_tokens([text[start:end]])[0] > budget:
            end = start + (end - start) // 2
        pieces.append(text[start:end])
        start = end
    return pieces


def _pack(parts: list[str], joiner: str, budget: int, count_tokens: CountTokens) -> list[str]:
    """Greedily join consecutive parts while the joined text, counted exactly, fits the budget."""
    out: list[str] = []
    current: list[str] = []
    for part, n in zip(parts, count_tokens(parts)):
        if n > budget:
            if current:
                out.append(joiner.join(current))
                current = []
            out.extend(_hard_split(part, budget, count_tokens))
        elif current and count_tokens([joiner.join(current + [part])])[0] > budget:
            out.append(joiner.join(current))
            current = [part]
        else:
            current.append(part)
    if current:
        out.append(joiner.join(current))
    return [p for p in out if p.strip()]


def split_unit(text: str, budget: int, count_tokens: CountTokens) -> list[str]:
    """Split an over-long unit at sentence boundaries (lines for code/lists/tables)."""
    if count_tokens([text])[0] <= budget:
        return [text]
    lines = text.split("\n")
    if text.startswith("```") and len(lines) > 2 and lines[-1] == "```":
        fence = lines[0]
        inner_budget = budget - count_tokens([f"{fence}\n\n```"])[0]
        # Fences that (nearly) fill the budget on their own cannot be repeated on every piece.
        if inner_budget >= 8:
            return [f"{fence}\n{piece}\n```"
                    for piece in _pack(lines[1:-1], "\n", inner_budget, count_tokens)]
    multiline = "\n" in text.strip()
    return _pack(split_sentences(text), "\n" if multiline else " ", budget, count_tokens)


def build_passages(blocks: list[Block], title: str, count_tokens: CountTokens, max_tokens: int,
                   prefix_tokens: int = 0, min_tokens: int = MIN_TOKENS) -> list[Passage]:
    """Group a post's blocks into passages that fit the embedding window."""
    sections: list[tuple[tuple[str, ...], str, list[str]]] = []
    path: list[tuple[int, str]] = []
    anchor = ""
    seen_anchors: dict[str, int] = {}
    for block in blocks:
        if block.kind == "heading":
            while path and path[-1][0] >= block.level:
                path.pop()
            path.append((block.level, block.text))
            anchor = block.anchor
            if not anchor:
                # As GitHub's slugger: "a", "a" again is "a-1", and a later "a 1" is "a-1-1".
                anchor = slug = slugify(block.text)
                while anchor in seen_anchors:
                    seen_anchors[slug] += 1
                    anchor = f"{slug}-{seen_anchors[slug]}"
            seen_anchors.setdefault(anchor, 0)
            continue
        heading_path = tuple(text for _, text in path)
        if sections and sections[-1][0] == heading_path and sections[-1][1] == anchor:
            sections[-1][2].append(block.text)
        else:
            sections.append((heading_path, anchor, [block.text]))

    passages: list[Passage] = []
    for heading_path, anchor, units in sections:
        context = context_text(title, heading_path)
        overhead = prefix_tokens + (count_tokens([context + "\n\n"])[0] if context else 0)
        budget = max(16, max_tokens - overhead)
        pieces = [p for unit in units for p in split_unit(unit, budget, count_tokens)]
        merged: list[tuple[str, int]] = []
        for piece, n in zip(pieces, count_tokens(pieces)):
            if merged and (merged[-1][1] < min_tokens or n < min_tokens):
                joined = merged[-1][0] + "\n\n" + piece
                joined_n = count_tokens([joined])[0]
                if joined_n <= budget:
                    merged[-1] = (joined, joined_n)
                    continue
            merged.append((piece, n))
        for text, _ in merged:
            passages.append(Passage(len(passages), heading_path, anchor, text))
    return passages
