"""Every post format ragserver reads, in one table: file suffixes and media types to a parser.

A parser turns a post's text into a Document: its title, URL, date and tags, and its
blocks (headings and content units) for ingest/chunking.py to split. Folders and globs
pick up exactly the suffixes below, a feed entry finds its parser by media type and an
NDJSON line by its "format" name. Adding a format is one parser module in this package,
one row in FORMATS and its tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath
from typing import Protocol

from ..records import Document
from .html import parse_html
from .markdown import parse_markdown
from .text import parse_text


class Parse(Protocol):
    """What every format's parser takes (by keyword, after the text) and gives."""

    def __call__(self, text: str, *, source: str, base_url: str = "", url: str = "",
                 title: str = "", date=None, tags=None) -> Document:
        """A post's text as a Document, or SkipInput saying why it cannot be one."""


@dataclass(frozen=True)
class Format:
    """One row of FORMATS: a post format, how its posts are recognised, and its parser."""

    name: str  # as an NDJSON line's "format" field gives it
    label: str  # as messages to people name it
    parse: Parse
    suffixes: tuple[str, ...]  # lower case, with the dot
    media_types: tuple[str, ...]  # as feed entries give their content's type


FORMATS = (
    #      name        label         parser          file suffixes,
    #                                                then media types
    Format("markdown", "Markdown",   parse_markdown, (".md", ".markdown", ".mdown", ".mkd"),
           ("text/markdown", "text/x-markdown")),
    Format("html",     "HTML",       parse_html,     (".html", ".htm"),
           ("text/html", "application/xhtml+xml")),
    Format("text",     "plain text", parse_text,     (".txt",),
           ("text/plain",)),
)

_BY_NAME = {f.name: f for f in FORMATS}
_BY_SUFFIX = {suffix: f for f in FORMATS for suffix in f.suffixes}
_BY_MEDIA_TYPE = {media_type: f for f in FORMATS for media_type in f.media_types}


def format_for_path(path: str | PurePath) -> Format | None:
    """The format a file's suffix names, or None: folders and globs read only those files."""
    return _BY_SUFFIX.get(PurePath(path).suffix.lower())


def format_for_media_type(media_type: str | None) -> Format | None:
    """The format of content of a media type ("text/html; charset=utf-8" is HTML), or None."""
    return _BY_MEDIA_TYPE.get((media_type or "").split(";")[0].strip().lower())


def format_named(name) -> Format | None:
    """The format an NDJSON line's "format" field names ("markdown", "html", "text"), or None."""
    return _BY_NAME.get(name) if isinstance(name, str) else None
