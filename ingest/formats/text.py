"""Plain-text posts: newsletter archives, exported notes, blogs kept as .txt files.

A block is a run of lines between blank lines. The rules, tried in this order:

- Front matter: optional YAML between --- lines at the very top, as in Markdown posts
  (title, date, url, slug, tags).
- Code: a block whose every line is indented by four spaces or a tab, together with
  such blocks right after it (blank lines between them are kept); line by line, less
  that indentation.
- Headings: a line underlined with three or more = (level 1) or - (level 2); and a block
  of one line of at most 100 characters, mostly letters and all of them capitals
  ("SETTING UP"), when more text follows it (level 2).
- Rules: any other line of three or more -, =, *, _ or ~ (spaces between allowed) ends
  the paragraph or list it is in and is dropped.
- Lists: a block whose first line starts with -, *, +, • or a number and . or ), then a
  space, is a list. A line with such a marker, indented no deeper than the first one,
  starts the next item; other lines (wrapped text, nested items) continue the item. In
  a paragraph, a line starting with "- " is just wrapped text.
- Paragraphs: everything else; hard-wrapped lines are joined with single spaces.

The title is the front matter's, else the first line when it is underlined, or when it
is a block of its own (not a list item) of at most 100 characters with more text after
it; else the file name makes one ("issue-12.txt" is "Issue 12").
"""

from __future__ import annotations

import re

from ..records import Block, Document
from .post import read_post

MAX_HEADING_CHARS = 100
_UNDERLINE = re.compile(r"={3,}|-{3,}")
_RULE = re.compile(r"([-=*_~])(?:[ \t]*\1){2,}")
_ITEM = re.compile(r" {0,3}(?:[-*+•]|\d{1,9}[.)])[ \t]+(?=\S)")


def parse_text(text: str, *, source: str, base_url: str = "", url: str = "", title: str = "",
               date=None, tags=None) -> Document:
    """A plain-text post (with optional YAML front matter) as a Document."""
    return read_post(text, text_blocks, source=source, base_url=base_url, url=url,
                     title=title, date=date, tags=tags)


def text_blocks(text: str) -> list[Block]:
    """Headings, paragraphs, list items and code of plain text; a title line is an H1."""
    groups = _groups(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    blocks: list[Block] = []
    for index, (kind, lines) in enumerate(groups):
        more = index + 1 < len(groups)
        if kind == "code":
            blocks.append(Block("code", "```\n" + "\n".join(lines) + "\n```"))
        elif len(lines) == 1 and _is_heading_line(lines[0]) and more and (
                index == 0 or _is_capitals(lines[0])):
            blocks.append(Block("heading", lines[0].strip(), level=1 if index == 0 else 2))
        else:
            blocks.extend(_units(lines, first=index == 0))
    return blocks


def _groups(lines: list[str]) -> list[tuple[str, list[str]]]:
    """Runs of lines between blank lines: ("code", dedented lines) or ("text", lines)."""
    groups: list[tuple[str, list[str]]] = []
    previous, previous_end, index = "", 0, 0
    while index < len(lines):
        if _is_blank(lines[index]):
            index += 1
            continue
        start = index
        while index < len(lines) and not _is_blank(lines[index]):
            index += 1
        run = lines[start:index]
        if all(_is_indented(line) for line in run):
            code = [_dedent(line) for line in run]
            if previous == "code":
                # Code often has blank lines in it: indented runs in a row are one block.
                groups[-1][1].extend([""] * (start - previous_end) + code)
            else:
                groups.append(("code", code))
            previous = "code"
        elif all(_RULE.fullmatch(line.strip()) for line in run):
            previous = "rule"  # gives nothing, so it neither is nor comes after a title
        else:
            groups.append(("text", run))
            previous = "text"
        previous_end = index
    return groups


def _units(lines: list[str], *, first: bool) -> list[Block]:
    """A text block's underlined headings, list items and paragraphs."""
    blocks: list[Block] = []
    kind, gathered = "paragraph", []
    # Only a block may start a list: hard-wrapped prose often puts "- " at a line's start.
    item_indent = _item_indent(lines[0])

    def flush():
        if gathered:
            blocks.append(Block(kind, " ".join(line.strip() for line in gathered)))
            gathered.clear()

    for index, line in enumerate(lines):
        stripped = line.strip()
        if _UNDERLINE.fullmatch(stripped) and kind == "paragraph" and gathered:
            heading = gathered.pop().strip()
            flush()
            # The first line of the text is its title, whichever underline it has.
            level = 1 if stripped[0] == "=" or (first and index == 1) else 2
            blocks.append(Block("heading", heading, level=level))
        elif _RULE.fullmatch(stripped):
            flush()
            kind = "paragraph"
        elif (item := _ITEM.match(line)) and _item_indent(line) <= item_indent:
            flush()
            kind = "list_item"
            gathered.append(line[item.end():])
        else:
            gathered.append(line)
    flush()
    return blocks


def _is_heading_line(line: str) -> bool:
    """Short enough for a heading, and not a list item."""
    return len(line.strip()) <= MAX_HEADING_CHARS and not _ITEM.match(line)


def _item_indent(line: str) -> int:
    """Spaces before a list marker, or -1 if the line is no list item."""
    return len(line) - len(line.lstrip(" ")) if _ITEM.match(line) else -1


def _is_capitals(line: str) -> bool:
    """Mostly letters, and all of them capitals: not `2024-03-05T14:35Z`."""
    letters = [c for c in line if c.isalpha()]
    return (len(letters) >= 2 and all(c.isupper() for c in letters)
            and 2 * len(letters) >= len("".join(line.split())))


def _is_blank(line: str) -> bool:
    return not line.strip()


def _is_indented(line: str) -> bool:
    return line.startswith(("    ", "\t")) and not _is_blank(line)


def _dedent(line: str) -> str:
    return line[1:] if line.startswith("\t") else line[4:]
