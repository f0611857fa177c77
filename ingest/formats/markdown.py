"""Markdown posts: markdown-it-py tokens walked into headings and content units."""

from __future__ import annotations

from markdown_it import MarkdownIt

from ..records import Block, Document
from .post import read_post

# The commonmark preset stops at 20 levels of nesting and silently drops anything deeper
# (a list nested ten deep loses its tail); 100 is markdown-it's default preset and still
# far from Python's recursion limit.
_md = MarkdownIt("commonmark", {"html": True, "maxNesting": 100}).enable("table")


def parse_markdown(text: str, *, source: str, base_url: str = "", url: str = "",
                   title: str = "", date=None, tags=None) -> Document:
    """A Markdown post (with optional YAML front matter) as a Document."""
    return read_post(text, markdown_blocks, source=source, base_url=base_url, url=url,
                     title=title, date=date, tags=tags)


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
