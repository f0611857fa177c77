"""Properties of the chunker and the source parsers, over generated and hostile input.

These are pure functions, so token counts come from tiny deterministic stand-ins for a
tokenizer (characters, UTF-8 bytes, crude word pieces) rather than the real model.
"""

from __future__ import annotations

import io
import json
import re
import string

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ragserver.ingest.chunking import (MAX_CONTEXT_CHARS, build_passages, context_text, embedding_text,
                             slugify, split_sentences, split_unit)
from ragserver.ingest.formats import FORMATS
from ragserver.ingest.formats.html import html_blocks, html_title, parse_html
from ragserver.ingest.formats.markdown import markdown_blocks, parse_markdown
from ragserver.ingest.formats.post import split_front_matter, take_title
from ragserver.ingest.formats.text import text_blocks
from ragserver.ingest.records import Block
from ragserver.ingest.sources import Document, SkipInput, Skipped, decode_text, read_ndjson

# Same examples on every run and machine, and no .hypothesis example database on disk.
PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=100,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Generated markup often looks like a file name or XML to BeautifulSoup; that is the point.
pytestmark = [pytest.mark.filterwarnings("ignore::bs4.MarkupResemblesLocatorWarning"),
              pytest.mark.filterwarnings("ignore::bs4.XMLParsedAsHTMLWarning")]

CONTENT_KINDS = {"paragraph", "list_item", "code", "table", "quote"}


# -- token counters -----------------------------------------------------------

def count_chars(texts: list[str]) -> list[int]:
    """One token per character."""
    return [len(t) for t in texts]


def count_bytes(texts: list[str]) -> list[int]:
    """Like byte-level BPE at its worst: one token per UTF-8 byte."""
    return [len(t.encode("utf-8", "surrogatepass")) for t in texts]


_PIECE = re.compile(r"\w+|[^\w\s]")


def count_pieces(texts: list[str]) -> list[int]:
    """Like a word-piece tokenizer at its best: a word or a punctuation mark is one token."""
    return [len(_PIECE.findall(t)) for t in texts]


COUNTERS = st.sampled_from([count_chars, count_bytes, count_pieces])


# -- strategies ---------------------------------------------------------------

# Everything a str can hold: controls, NUL, unassigned code points, lone surrogates.
ANY_CHAR = st.characters(exclude_categories=())
ANY_TEXT = st.text(ANY_CHAR, max_size=200)
WORD = st.text(string.ascii_lowercase, min_size=1, max_size=8)
WORDS = st.lists(WORD, min_size=1, max_size=6)

MARKDOWN_PIECES = [
    "\n", "\n\n", "# ", "###### ", "Title\n===\n", "- ", "* ", "1. ", "> ", "    ", "  ", "\t",
    "```", "```py\n", "~~~\n", "|", "| a | b |\n| --- | --- |\n", "---\n", "***\n", "<div>",
    "</div>", "<!--", "-->", "<![CDATA[", "<?", "<!", "<script>", "</script>", "<p>", "<pre>",
    "*", "_", "`", "[", "](", ")", "![", "&amp;", "&#0;", "&#xD800;", "\\", "\x00", "\r\n", "\r",
    "\u2028", "\ufeff", "\ud800", "\udc00", "word ", "Sentence. ", "<", ">", "<table><tr><td>",
    "<h1>",
]
HTML_PIECES = [
    "<html>", "<head>", "<title>", "</title>", "<meta property='og:title' content=' T  t '>",
    "<meta property=og:title>", "<body>", "<article>", "</article>", "<main>", "<nav>", "</nav>",
    "<header>", "<footer>", "<aside>", "<script>", "</script>", "<style>", "<p>", "</p>", "<li>",
    "<ul>", "<pre>", "</pre>", "<blockquote>", "<table>", "<tr>", "<td>", "<th>", "</table>",
    "<h1 id='x'>", "<h1>", "</h1>", "<h2>", "<h6 id=''>", "<svg>", "<template>", "<!--", "-->",
    "<![CDATA[", "]]>", "<!DOCTYPE html>", "<?xml version='1.0'?>", "&amp;", "&#0;", "&", "<",
    ">", "</", "<a href='", "'>", "\x00", "\ud800", "\n", " ", "word", "<br/>", "<p", "<li><p>",
    "<div>",
]


def _spliced(pieces: list[str]) -> st.SearchStrategy[str]:
    """Syntax fragments and arbitrary text glued together: near-valid, often broken, markup."""
    return st.lists(st.one_of(st.sampled_from(pieces), st.text(ANY_CHAR, max_size=12)),
                    max_size=40).map("".join)


TEXT_PIECES = [
    "\n", "\n\n", "    ", "\t", "  ", "- ", "* ", "+ ", "• ", "1. ", "12) ", "===\n", "---\n",
    "* * *\n", "~~~", "___", "SHOUTED WORDS\n", "T1\n", "`2024-03-05T14:35Z`", "Title\n\n",
    "\r\n", "\r", "\x0c", "\x1c", "\u2028", "\u00a0", "\ufeff", "\ud800", "\x00", "ǅ", "ß",
    "word ", "Sentence. ",
]


MARKDOWNISH = st.one_of(ANY_TEXT, _spliced(MARKDOWN_PIECES))
HTMLISH = st.one_of(ANY_TEXT, _spliced(HTML_PIECES))
TEXTISH = st.one_of(ANY_TEXT, _spliced(TEXT_PIECES))
# Hypothesis favours small integers, so name the depths around markdown-it's nesting limit.
DEPTHS = st.one_of(st.integers(0, 30), st.sampled_from([49, 50, 51, 99, 100, 101, 250, 400]))


@st.composite
def deep_markdown(draw) -> str:
    """Quotes and lists nested far deeper than any post, up to a few hundred levels."""
    pattern = draw(st.lists(st.sampled_from(["> ", "- ", "* ", "1. "]), min_size=1, max_size=4))
    depth = draw(DEPTHS)
    prefix = "".join(pattern[i % len(pattern)] for i in range(depth))
    return prefix + " ".join(draw(WORDS)) + draw(st.sampled_from(["", "\n", "\n\nafter\n"]))


@st.composite
def deep_html(draw) -> str:
    """Block and wrapper elements nested a few hundred levels deep, closed or not."""
    pattern = draw(st.lists(st.sampled_from(["<div>", "<ul><li>", "<blockquote>", "<p>",
                                             "<section>", "<table><tr><td>"]),
                            min_size=1, max_size=3))
    depth = draw(DEPTHS)
    tags = [tag for i in range(depth) for tag in re.findall(r"<(\w+)>", pattern[i % len(pattern)])]
    opened = "".join(f"<{tag}>" for tag in tags)
    closed = "".join(f"</{tag}>" for tag in reversed(tags)) if draw(st.booleans()) else ""
    return opened + " ".join(draw(WORDS)) + closed


@st.composite
def markdown_post(draw) -> tuple[str, list[str]]:
    """A Markdown post written with plain lower-case words, and its words in reading order."""
    parts: list[str] = []
    words: list[str] = []
    kinds = ["heading", "paragraph", "nested", "list", "code", "table", "html"]
    for kind in draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=8)):
        if kind == "heading":
            line = draw(WORDS)
            parts.append("#" * draw(st.integers(1, 6)) + " " + " ".join(line))
            words += line
        elif kind == "paragraph":
            lines = draw(st.lists(WORDS, min_size=1, max_size=3))
            parts.append("\n".join(" ".join(line) for line in lines))
            words += [w for line in lines for w in line]
        elif kind == "nested":
            # "> - 1. > word": quotes and lists inside each other, one container per prefix.
            containers = draw(st.lists(st.sampled_from(["> ", "- ", "1. "]), min_size=1,
                                       max_size=40))
            line = draw(WORDS)
            parts.append("".join(containers) + " ".join(line))
            words += line
        elif kind == "list":
            depth, lines = 0, []
            for line in draw(st.lists(WORDS, min_size=1, max_size=14)):
                depth = draw(st.integers(0, depth + 1)) if lines else 0
                lines.append("  " * depth + "- " + " ".join(line))
                words += line
            parts.append("\n".join(lines))
        elif kind == "code":
            lines = draw(st.lists(WORDS, min_size=1, max_size=4))
            lang = draw(st.sampled_from(["", "py", "sql"]))
            parts.append(f"```{lang}\n" + "\n".join(" ".join(line) for line in lines) + "\n```")
            words += [w for line in lines for w in line]
        elif kind == "table":
            columns = draw(st.integers(1, 3))
            rows = draw(st.lists(st.lists(WORD, min_size=columns, max_size=columns),
                                 min_size=1, max_size=4))
            table = ["| " + " | ".join(row) + " |" for row in rows]
            table.insert(1, "|" + " --- |" * columns)
            parts.append("\n".join(table))
            words += [w for row in rows for w in row]
        else:
            line = draw(WORDS)
            parts.append("<div class='note'>" + " ".join(line) + "</div>")
            words += line
    return "\n\n".join(parts) + "\n", words


@st.composite
def text_post(draw) -> tuple[str, list[str]]:
    """A plain-text post of words (capitals in shouted headings), and its words in order."""
    parts: list[str] = []
    words: list[str] = []
    kinds = ["paragraph", "underlined", "capitals", "list", "code", "rule"]
    for kind in draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=8)):
        if kind == "paragraph":
            lines = draw(st.lists(WORDS, min_size=1, max_size=4))
            indent = draw(st.sampled_from(["", " ", "  "]))  # hanging or stray indents
            parts.append("\n".join(indent + " ".join(line) for line in lines))
            words += [w for line in lines for w in line]
        elif kind == "underlined":
            line = draw(WORDS)
            underline = draw(st.sampled_from(["=", "-"])) * draw(st.integers(3, 30))
            parts.append(" ".join(line) + "\n" + underline)
            words += line
        elif kind == "capitals":
            line = draw(WORDS)
            parts.append(" ".join(line).upper())
            words += line
        elif kind == "list":
            lines = []
            for line in draw(st.lists(WORDS, min_size=1, max_size=8)):
                marker = draw(st.sampled_from(["- ", "* ", "• ", "1. ", "10) ", "  - ", "  "]))
                lines.append((marker if lines else "- ") + " ".join(line))
                words += line
            parts.append("\n".join(lines))
        elif kind == "code":
            lines = draw(st.lists(st.one_of(WORDS, st.just([])), min_size=1, max_size=6)
                         .filter(lambda ls: any(ls)))
            indent = draw(st.sampled_from(["    ", "\t", "      "]))
            parts.append("\n".join(indent + " ".join(line) if line else "" for line in lines))
            words += [w for line in lines for w in line]
        else:
            parts.append(draw(st.sampled_from(["* * *", "---", "=====", "~~~", "___"])))
    return "\n\n".join(parts) + draw(st.sampled_from(["", "\n", "\n\n"])), words


@st.composite
def html_page(draw) -> tuple[str, list[str]]:
    """An HTML page of lower-case words, with upper-case chrome that must not be read."""
    parts: list[str] = []
    words: list[str] = []
    kinds = ["p", "li", "heading", "pre", "quote", "table", "loose", "div", "dl"]
    for kind in draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=8)):
        line = draw(WORDS)
        text = " ".join(line)
        words += line
        if kind == "p":
            parts.append(f"<p>{text}</p>")
        elif kind == "li":
            parts.append(f"<ul><li><p>{text}</p></li></ul>")
        elif kind == "heading":
            level = draw(st.integers(1, 6))
            parts.append(f"<h{level}>{text}</h{level}>")
        elif kind == "pre":
            parts.append("<pre><code>" + "\n".join(line) + "</code></pre>")
        elif kind == "quote":
            parts.append(f"<blockquote><p>{text}</p></blockquote>")
        elif kind == "table":
            parts.append("<table><tr>" + "".join(f"<td>{w}</td>" for w in line) + "</tr></table>")
        elif kind == "loose":
            parts.append(f"{text}<br>")
        elif kind == "div":
            parts.append(f"<div class='paragraph'>{text}</div>")
        else:
            parts.append(f"<dl><dt>{line[0]}</dt><dd>{' '.join(line[1:])}</dd></dl>")
    chrome = ("<nav>NAVIGATION MENU</nav><script>var TRACKING = 1;</script>"
              "<style>P { COLOR: RED }</style>")
    body = "".join(parts)
    layout = draw(st.sampled_from(["article", "fragment", "no body tag"]))
    if layout == "article":
        page = (f"<html><head><title>SITE TITLE</title></head><body>{chrome}<article>{body}"
                "</article><footer>COPYRIGHT FOOTER</footer></body></html>")
    elif layout == "fragment":
        page = chrome + body + "<aside>RELATED POSTS</aside>"
    else:  # <body> is optional in HTML, and html.parser does not add it
        page = f"<html><head><title>SITE TITLE</title><meta charset=utf-8></head>{chrome}{body}"
    return page, words


def _content_words(blocks) -> list[str]:
    """Words of blocks in order, leaving out code fences and list, table and markup syntax."""
    return [w for b in blocks for line in b.text.split("\n")
            if not line.lstrip().startswith("```") for w in re.findall(r"[A-Za-z]+", line)]


# -- Markdown, HTML and plain-text blocks -------------------------------------

def _check_blocks(blocks):
    """Headings have a level; content units have a known kind and some text."""
    for block in blocks:
        assert isinstance(block, Block) and isinstance(block.text, str)
        if block.kind == "heading":
            assert 1 <= block.level <= 6
        else:
            assert block.kind in CONTENT_KINDS and block.text.strip(), block


@PROPERTY
@given(st.one_of(MARKDOWNISH, deep_markdown()))
def test_markdown_blocks_accept_any_text(text):
    """Any str, however broken or deeply nested, parses into headings and non-blank units."""
    _check_blocks(markdown_blocks(text))


@PROPERTY
@given(markdown_post())
def test_markdown_blocks_keep_every_word_in_order(post):
    """Headings, paragraphs, nested lists and quotes, code, tables, HTML: no word is lost."""
    text, words = post
    assert _content_words(markdown_blocks(text)) == words


@PROPERTY
@given(st.one_of(HTMLISH, deep_html()))
def test_html_blocks_and_title_accept_any_text(html):
    """Any str, however broken or deeply nested, gives blocks and a single-spaced title."""
    blocks = html_blocks(html)
    _check_blocks(blocks)
    title = html_title(html, take_title(blocks)[0])
    assert title == " ".join(title.split())


@PROPERTY
@given(html_page())
def test_html_blocks_keep_article_words_and_drop_chrome(page):
    """All words of the body are read, in order, whatever element holds them; chrome is not."""
    html, words = page
    assert _content_words(html_blocks(html)) == words


@PROPERTY
@given(st.one_of(TEXTISH, MARKDOWNISH))
def test_text_blocks_accept_any_text(text):
    """Any str, however it mixes markers, rules, indents and line breaks, gives valid blocks."""
    _check_blocks(text_blocks(text))


@PROPERTY
@given(text_post())
def test_text_blocks_keep_every_word_in_order(post):
    """Paragraphs, headings, lists and code of plain text: no word is lost or moved."""
    text, words = post
    assert [w.lower() for w in _content_words(text_blocks(text))] == words


@PROPERTY
@given(deep_html())
def test_deeply_nested_html_keeps_its_words(html):
    """Hundreds of nested elements, closed or not, still give their text."""
    words = re.findall(r"[a-z]+", re.sub(r"</?\w+>", " ", html))
    assert _content_words(html_blocks(html)) == words


blocks_strategy = st.lists(st.builds(
    Block, st.sampled_from(["heading", "paragraph", "code"]), st.text(max_size=10),
    st.integers(1, 6)), max_size=6)


@PROPERTY
@given(blocks_strategy)
def test_take_title_removes_only_a_leading_h1(blocks):
    """The title is the first H1 before any content; the other blocks stay, in order."""
    title, rest = take_title(blocks)
    if title is None:
        assert rest == blocks
        first_content = next((i for i, b in enumerate(blocks) if b.kind != "heading"),
                             len(blocks))
        assert all(b.level != 1 for b in blocks[:first_content])
    else:
        index = next(i for i, b in enumerate(blocks) if b.kind == "heading" and b.level == 1)
        assert all(b.kind == "heading" for b in blocks[:index])
        assert title == blocks[index].text and rest == blocks[:index] + blocks[index + 1:]


# -- slugs, sentences, splitting ----------------------------------------------

@PROPERTY
@given(ANY_TEXT)
def test_slugify_is_url_safe_lower_case_and_stable(text):
    """Slugs hold only word characters and hyphens, are lower case, and slug to themselves."""
    slug = slugify(text)
    assert re.fullmatch(r"[\w-]*", slug)
    assert not re.search(r"[\s/?#%&=+.:;<>\"'`\\]", slug)
    assert slug == slug.lower()
    assert slugify(slug) == slug


@PROPERTY
@given(WORDS)
def test_slugify_of_plain_words_is_hyphenated(words):
    """Plain ASCII headings slug the way GitHub does it."""
    assert slugify(" ".join(w.upper() for w in words) + "?") == "-".join(words)


@PROPERTY
@given(ANY_TEXT)
def test_split_sentences_keeps_the_text(text):
    """Lines rejoin to the text exactly; sentences keep every word and end at sentence marks."""
    parts = split_sentences(text)
    if "\n" in text.strip():
        assert "\n".join(parts) == text
    else:
        assert " ".join(parts).split() == text.split()
        for part in parts[:-1]:
            assert re.search(r"[.!?。][\"')\]]?\Z", part), parts


def _non_space(texts) -> str:
    """The characters of texts in order, without whitespace: what splitting must keep."""
    return "".join("".join(t.split()) for t in texts)


@PROPERTY
@given(st.one_of(ANY_TEXT, _spliced([" ", ". ", "\n", "word", "x" * 60, "?"])),
       st.integers(16, 120), COUNTERS)
def test_split_unit_pieces_fit_and_rejoin(text, budget, count_tokens):
    """Every piece fits the budget, none is blank, and the pieces hold exactly the text's words."""
    pieces = split_unit(text, budget, count_tokens)
    if count_tokens([text])[0] <= budget:
        assert pieces == [text]
        return
    assert all(n <= budget for n in count_tokens(pieces))
    assert all(p.strip() for p in pieces)
    assert _non_space(pieces) == _non_space([text])


code_lines = st.lists(st.text(st.characters(exclude_characters="`\n"), max_size=40), min_size=1,
                      max_size=30)


@PROPERTY
@given(st.text(st.characters(exclude_characters="`\n", exclude_categories=("Zs", "Cc")),
               max_size=60),
       code_lines, st.integers(16, 120), COUNTERS)
def test_split_unit_code_pieces_fit_and_keep_lines(lang, lines, budget, count_tokens):
    """A split code block keeps its code and fits the budget, however long its fence line."""
    unit = f"```{lang}\n" + "\n".join(lines) + "\n```"
    pieces = split_unit(unit, budget, count_tokens)
    assert all(n <= budget for n in count_tokens(pieces))
    assert all(p.strip() for p in pieces)
    if all(p.startswith(f"```{lang}\n") and p.endswith("\n```") for p in pieces):
        inner = [p.split("\n", 1)[1].rsplit("\n", 1)[0] for p in pieces]
        assert _non_space(inner) == _non_space(lines)
    else:
        assert _non_space(pieces) == _non_space([unit])


# -- passages -----------------------------------------------------------------

# Block text has no backticks, so the only lines starting with ``` are code fences.
plain_text = st.text(st.characters(exclude_characters="`", exclude_categories=("Cs",)),
                     max_size=400).filter(str.strip)
anchors = st.one_of(st.just(""), st.text(string.ascii_lowercase + "-", max_size=8))


@st.composite
def post_blocks(draw) -> list[Block]:
    """Headings (some with explicit anchors) and content units of every kind and size."""
    blocks = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["heading", "paragraph", "list_item", "quote", "table",
                                     "code", "long"]))
        if kind == "heading":
            blocks.append(Block("heading", draw(st.text(max_size=30)),
                                level=draw(st.integers(1, 6)), anchor=draw(anchors)))
        elif kind == "code":
            lang = draw(st.text(string.ascii_lowercase, max_size=6))
            code = draw(st.lists(st.text(st.characters(exclude_characters="`\n"), max_size=80),
                                 min_size=1, max_size=20).filter(lambda ls: "".join(ls).strip()))
            blocks.append(Block("code", f"```{lang}\n" + "\n".join(code) + "\n```"))
        elif kind == "long":
            sentence = draw(st.sampled_from(["One sentence here. ", "Why not? ", "word " * 30,
                                             "x" * 300, "line\n"]))
            blocks.append(Block("paragraph", sentence * draw(st.integers(1, 40))))
        else:
            blocks.append(Block(kind, draw(plain_text)))
    return blocks


def _without_fences(texts) -> str:
    """Like _non_space, less fence lines (a split code block repeats its fences per piece)."""
    return _non_space("\n".join(line for line in t.split("\n") if not line.startswith("```"))
                      for t in texts)


passage_args = st.tuples(post_blocks(), st.text(max_size=60), COUNTERS, st.integers(40, 600),
                         st.integers(0, 20), st.integers(0, 64))


def _room(title, heading_path, count_tokens, max_tokens, prefix_tokens) -> int:
    """Tokens left for passage text once the prefix and the context are in the window."""
    context = context_text(title, heading_path)
    return max_tokens - prefix_tokens - (count_tokens([context + "\n\n"])[0] if context else 0)


@PROPERTY
@given(passage_args)
def test_passages_fit_the_window_and_lose_nothing(args):
    """Passages are numbered 0..n-1, non-blank, fit the window and hold every word in order."""
    blocks, title, count_tokens, max_tokens, prefix_tokens, min_tokens = args
    passages = build_passages(blocks, title, count_tokens, max_tokens, prefix_tokens, min_tokens)
    assert [p.position for p in passages] == list(range(len(passages)))
    assert all(p.text.strip() for p in passages)
    content = [b.text for b in blocks if b.kind != "heading"]
    assert _without_fences(p.text for p in passages) == _without_fences(content)
    for p in passages:
        # A context that leaves under 16 tokens still gets 16 (see build_passages).
        if _room(title, p.heading_path, count_tokens, max_tokens, prefix_tokens) >= 16:
            text = embedding_text(title, p.heading_path, p.text)
            assert prefix_tokens + count_tokens([text])[0] <= max_tokens, p
    assert build_passages(blocks, title, count_tokens, max_tokens, prefix_tokens,
                          min_tokens) == passages


@PROPERTY
@given(passage_args)
def test_tiny_passages_remain_only_where_merging_would_overflow(args):
    """Next to a passage under min_tokens in the same section, merging would not fit."""
    blocks, title, count_tokens, max_tokens, prefix_tokens, min_tokens = args
    passages = build_passages(blocks, title, count_tokens, max_tokens, prefix_tokens, min_tokens)
    for a, b in zip(passages, passages[1:]):
        if (a.heading_path, a.anchor) != (b.heading_path, b.anchor):
            continue
        room = _room(title, a.heading_path, count_tokens, max_tokens, prefix_tokens)
        if room < 16 or min(count_tokens([a.text, b.text])) >= min_tokens:
            continue
        assert count_tokens([a.text + "\n\n" + b.text])[0] > room


@PROPERTY
@given(st.lists(st.one_of(st.text(max_size=12), st.sampled_from(["Example", "Example 1",
                                                                   "example-1", "Example-1"])),
                min_size=1, max_size=8))
def test_every_section_gets_its_own_anchor(headings):
    """Repeated or look-alike headings still get distinct anchors; the first is the plain slug."""
    blocks = [block for text in headings
              for block in (Block("heading", text, level=2), Block("paragraph", "words"))]
    passages = build_passages(blocks, "", count_chars, 200, min_tokens=0)
    assert len(passages) == len(headings)
    anchors = [p.anchor for p in passages]
    assert len(set(anchors)) == len(anchors), list(zip(headings, anchors))
    assert anchors[0] == slugify(headings[0])


@PROPERTY
@given(st.text(ANY_CHAR, max_size=300), st.lists(st.text(ANY_CHAR, max_size=80), max_size=4),
       st.text(ANY_CHAR, max_size=100))
def test_embedding_text_is_bounded_context_then_text(title, heading_path, text):
    """The passage text is embedded unchanged after at most MAX_CONTEXT_CHARS of context."""
    embedded = embedding_text(title, heading_path, text)
    assert embedded.endswith(text)
    context = context_text(title, heading_path)
    assert len(context) <= MAX_CONTEXT_CHARS
    assert embedded == (f"{context}\n\n{text}" if context else text)
    if title:
        assert context.startswith(title[:MAX_CONTEXT_CHARS])


# -- sources ------------------------------------------------------------------

@PROPERTY
@given(st.one_of(st.binary(max_size=300),
                 st.tuples(st.sampled_from([b"", b"\xef\xbb\xbf"]), st.binary(max_size=60))
                 .map(b"".join)))
def test_decode_text_returns_text_or_says_why(data):
    """Bytes are text, or SkipInput names the problem (with the offending byte, if not UTF-8)."""
    try:
        text = decode_text(data)
    except SkipInput as skip:
        reason = str(skip)
        if reason == "binary file":
            assert b"\x00" in data[:8192]
        elif reason == "empty":
            assert not data.decode("utf-8-sig").strip()
        else:
            match = re.fullmatch(r"not UTF-8 \(byte (\d+): (b'.*'|b\".*\")\)", reason)
            assert match, reason
            start = int(match.group(1))
            assert repr(data[start:start + 1]) == match.group(2)
            data[:start].decode("utf-8")  # everything before the reported byte is fine
            with pytest.raises(UnicodeDecodeError):
                data[start:].decode("utf-8")
    else:
        assert text.strip() and b"\x00" not in data[:8192]
        assert text.encode("utf-8") in (data, data[3:])


@PROPERTY
@given(st.text(max_size=200))
def test_decode_text_round_trips_utf8(text):
    """UTF-8 text comes back unchanged, less one byte-order mark."""
    data = text.encode("utf-8")
    expected = text.removeprefix("\ufeff")
    if "\x00" in text:
        with pytest.raises(SkipInput, match="binary"):
            decode_text(data)
    elif not expected.strip():
        with pytest.raises(SkipInput, match="empty"):
            decode_text(data)
    else:
        assert decode_text(data) == expected


YAML_VALUES = [
    "2024-03-01", "2024-02-30", "2024-13-01", "0000-01-01", "2001-12-14t21:59:43.10+99:99",
    "!!int x", "!!float x", "!!bool x", "!!timestamp x", "!!binary ###",
    "!!python/object:os.system",
    "[unclosed", "{a: [b", "&a x", "*missing", "? [a, b]", "'", '"\\x"', "- a", ": b", "|", ">",
    "1" * 5000, "[" * 2000, "{" * 2000, "Title: with colon", "%", "@", "`", "\t", "\x00",
    "\ufeff", "yes", "null", "~", "[a, b]",
]
YAML_KEYS = ["title", "date", "url", "slug", "tags", "draft", "?", "-", "", "<<"]


URL_VALUES = ["http://[x", "https://[::1", "//[", "https://ok.example/p", "/relative", "p/q?x=1#y",
              "mailto:a@b", "../up"]
front_matter_line = st.one_of(
    st.builds("{}: {}".format, st.sampled_from(YAML_KEYS), st.sampled_from(YAML_VALUES)),
    st.builds("{}: {}".format, st.sampled_from(["url", "slug"]), st.sampled_from(URL_VALUES)),
    st.builds("{}: {}".format, st.sampled_from(YAML_KEYS), st.text(string.printable, max_size=20)),
    st.text(ANY_CHAR, max_size=30))


@st.composite
def front_matter_text(draw) -> str:
    """A post that starts with --- and YAML-like lines, well-formed or not, closed or not."""
    lines = draw(st.lists(front_matter_line, max_size=4))
    closing = draw(st.sampled_from(["---", "---", "...", "--- ", ""]))
    return "\n".join(["---", *lines, closing]) + "\n" + draw(MARKDOWNISH)


@settings(PROPERTY, max_examples=300)
@given(st.one_of(front_matter_text(), MARKDOWNISH))
def test_split_front_matter_returns_meta_and_body_or_skips(text):
    """Front matter parses to a dict and the rest of the post, or SkipInput says it is malformed."""
    try:
        meta, body = split_front_matter(text)
    except SkipInput as skip:
        assert str(skip).startswith("malformed front matter")
        return
    assert isinstance(meta, dict) and text.endswith(body)
    if text.split("\n", 1)[0].rstrip() != "---":
        assert (meta, body) == ({}, text)


def _check_document(doc: Document, source: str):
    """Fields have their promised types, and the title and some content are non-blank."""
    assert isinstance(doc, Document) and doc.source == source
    assert isinstance(doc.title, str) and doc.title.strip()
    assert isinstance(doc.url, str) and (doc.date is None or isinstance(doc.date, str))
    assert all(isinstance(t, str) and t for t in doc.tags)
    _check_blocks(doc.blocks)
    assert any(b.kind != "heading" for b in doc.blocks)


sources = st.sampled_from(["post.md", "notes/index.md", "-", ".", "a b/c_d.markdown",
                           "https://blog.example/p/1"])
base_urls = st.sampled_from(["", "https://blog.example", "https://blog.example/til/"])
titles = st.one_of(st.just(""), st.text(ANY_CHAR, max_size=20), st.sampled_from(["  ", "\n"]))


@settings(PROPERTY, max_examples=300)
@given(st.one_of(front_matter_text(), MARKDOWNISH, deep_markdown()), sources, base_urls,
       titles)
def test_parse_markdown_gives_a_document_or_skips(text, source, base_url, title):
    """Any text becomes a Document with a title and content, or SkipInput with a reason."""
    try:
        doc = parse_markdown(text, source=source, base_url=base_url, title=title)
    except SkipInput as skip:
        assert str(skip)
        return
    _check_document(doc, source)


@PROPERTY
@given(st.one_of(HTMLISH, deep_html()), sources, titles)
def test_parse_html_gives_a_document_or_skips(html, source, title):
    """Any text becomes a Document with a title and content, or SkipInput with a reason."""
    try:
        doc = parse_html(html, source=source, title=title)
    except SkipInput as skip:
        assert str(skip)
        return
    _check_document(doc, source)


@settings(PROPERTY, max_examples=200)
@pytest.mark.parametrize("post_format", FORMATS, ids=lambda f: f.name)
@given(st.one_of(front_matter_text(), MARKDOWNISH, HTMLISH, TEXTISH), sources, base_urls,
       titles)
def test_every_format_gives_a_document_or_skips(post_format, text, source, base_url, title):
    """Every parser in the table makes any text a Document with a title and content, or skips."""
    try:
        doc = post_format.parse(text, source=source, base_url=base_url, title=title)
    except SkipInput as skip:
        assert str(skip)
        return
    _check_document(doc, source)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(ANY_CHAR, max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=6)


@st.composite
def ndjson_line(draw) -> str | bytes:
    """One line as a client might send it: a post, other JSON, junk, or not even UTF-8."""
    kind = draw(st.sampled_from(["post", "post", "post", "json", "junk", "bytes", "deep",
                                 "bigint", "blank"]))
    if kind == "post":
        item = {"id": draw(st.one_of(st.text(ANY_CHAR, max_size=10), st.integers(), JSON_VALUES,
                                     st.sampled_from(["post-1", "\ud800"]))),
                "content": draw(st.one_of(MARKDOWNISH, HTMLISH, TEXTISH, front_matter_text(),
                                          JSON_VALUES))}
        for key in ("title", "url", "date", "tags", "format"):
            if draw(st.booleans()):
                item[key] = draw(st.one_of(JSON_VALUES, st.sampled_from([f.name for f in FORMATS])))
        line = json.dumps(item, ensure_ascii=draw(st.booleans()))
    elif kind == "json":
        line = json.dumps(draw(JSON_VALUES))
    elif kind == "junk":
        line = draw(st.text(ANY_CHAR, max_size=50))
    elif kind == "bytes":
        return draw(st.binary(max_size=50)).replace(b"\n", b"")
    elif kind == "deep":  # past the recursion limit, or not
        line = draw(st.sampled_from(["[", '{"a": '])) * draw(st.sampled_from([1, 900, 5000]))
    elif kind == "bigint":  # past Python's 4300-digit limit on int(), or not
        digits = "9" * draw(st.sampled_from([1, 5000]))
        line = '{"id": "big", "content": "text", "n": ' + digits + "}"
    else:
        line = draw(st.sampled_from(["", " ", "\t", "\r"]))
    return line.replace("\n", " ")


def _gives_item(raw: bytes) -> bool:
    """A line that is not UTF-8 is reported; a blank one is passed over."""
    try:
        return bool(raw.decode("utf-8").strip())
    except UnicodeDecodeError:
        return True


@PROPERTY
@given(st.lists(ndjson_line(), max_size=6), st.booleans(),
       st.one_of(st.just(1_000_000), st.integers(40, 400)))
def test_read_ndjson_gives_one_document_or_skip_per_line(lines, binary, max_bytes):
    """Each non-blank line gives one Document or Skipped with a reason; nothing raises."""
    if binary:
        data = [line if isinstance(line, bytes) else line.encode("utf-8", "surrogatepass")
                for line in lines]
        stream = io.BytesIO(b"".join(line + b"\n" for line in data))
        expected = [n for n, raw in enumerate(data, 1) if _gives_item(raw)]
    else:
        texts = [line.decode("latin-1") if isinstance(line, bytes) else line for line in lines]
        stream = io.StringIO("".join(line + "\n" for line in texts))
        expected = [n for n, text in enumerate(texts, 1) if text.strip()]
    items = list(read_ndjson(stream, max_bytes))
    assert len(items) == len(expected)
    for number, item in zip(expected, items):
        if isinstance(item, Skipped):
            assert item.name == f"stdin line {number}" and item.reason
        else:
            _check_document(item, item.source)
            # The pipeline hashes and stores every field as UTF-8.
            json.dumps([item.source, item.title, item.url, item.date, item.tags,
                        [b.text for b in item.blocks]], ensure_ascii=False).encode("utf-8")
