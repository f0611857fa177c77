"""What reading hands to splitting: a post as a Document of Blocks, or SkipInput saying why not."""

from __future__ import annotations

from dataclasses import dataclass


class SkipInput(Exception):
    """This input cannot be used; the message says why."""


@dataclass(frozen=True)
class Block:
    kind: str  # heading, paragraph, list_item, code, table, quote
    text: str
    level: int = 0
    anchor: str = ""  # explicit id for headings, when the source has one


@dataclass(frozen=True)
class Document:
    source: str
    title: str
    url: str
    date: str | None
    tags: tuple[str, ...]
    blocks: tuple[Block, ...]
