"""Turn a post's blocks into passages. Pure functions: no I/O, no models.

A format's parser (ingest/formats/) has already cut the post into blocks: headings and
content units (paragraphs, list items, code blocks, tables, quotes). Units under one
heading become passages: tiny ones are merged with their neighbours, over-long ones are
split at sentence (or line) boundaries so that prefix + context + text fits the
embedding model's window, counted with the model's own tokenizer.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Callable, Iterable

from .records import Block

CountTokens = Callable[[list[str]], list[int]]

# Bump when the way passages are cut changes, so unchanged posts get re-chunked.
CHUNKER_VERSION = "2"
MIN_TOKENS = 32
MAX_CONTEXT_CHARS = 200


@dataclass(frozen=True)
class Passage:
    position: int
    heading_path: tuple[str, ...]
    anchor: str
    text: str


# -- anchors and context -----------------------------------------------------

def slugify(text: str) -> str:
    """GitHub-style heading slug: lower case, punctuation dropped, spaces to hyphens."""
    text = unicodedata.normalize("NFKC", text).lower().strip()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


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
