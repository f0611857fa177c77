"""Parsing and chunking of the real posts, measured with the real tokenizer."""

from __future__ import annotations

import pytest

from conftest import CORPUS, corpus_posts
from ragserver.ingest.chunking import MIN_TOKENS, build_passages, embedding_text, slugify, split_unit
from ragserver.ingest.formats.markdown import markdown_blocks, parse_markdown


def _passages(embedder, text, source, prefix=""):
    doc = parse_markdown(text, source=source)
    prefix_tokens = embedder.count_tokens([prefix])[0] if prefix else 0
    return doc, build_passages(list(doc.blocks), doc.title, embedder.count_tokens,
                               embedder.max_tokens, prefix_tokens)


def test_every_real_post_fits_the_model_window(embedder):
    """All 282 posts: passages are non-empty, ordered, and prefix + context + text fit."""
    prefix = "passage: "
    limit = embedder.model.max_seq_length
    total = 0
    for path in corpus_posts():
        source = path.relative_to(CORPUS).as_posix()
        doc, passages = _passages(embedder, path.read_text(), source, prefix)
        assert passages, source
        assert [p.position for p in passages] == list(range(len(passages)))
        texts = [prefix + embedding_text(doc.title, p.heading_path, p.text) for p in passages]
        with_specials = [len(ids) for ids in embedder.model.tokenizer(texts)["input_ids"]]
        assert max(with_specials) <= limit, (source, max(with_specials))
        assert all(p.text.strip() for p in passages)
        total += len(passages)
    assert total > 2000  # 282 posts, about ten passages each


def test_title_comes_from_first_h1_and_is_not_a_passage(embedder):
    path = CORPUS / "sqlite" / "enabling-wal-mode.md"
    text = path.read_text()
    doc, passages = _passages(embedder, text, "sqlite/enabling-wal-mode.md")
    first_line = text.splitlines()[0]
    assert doc.title == first_line.lstrip("# ").strip()
    assert all(doc.title not in p.text for p in passages)


def test_headings_give_path_and_anchor(embedder):
    path = CORPUS / "sqlite" / "enabling-wal-mode.md"
    doc, passages = _passages(embedder, path.read_text(), "x.md")
    headed = [p for p in passages if p.heading_path]
    assert headed, "this post has ## sections"
    for p in headed:
        assert p.anchor == slugify(p.heading_path[-1])
    assert "Turning WAL mode off again" in {p.heading_path[-1] for p in headed}
    assert {p.anchor for p in headed} >= {"turning-wal-mode-off-again"}


def test_code_blocks_stay_fenced_and_markdown_syntax_is_parsed(embedder):
    path = CORPUS / "sqlite" / "simple-recursive-cte.md"
    doc, passages = _passages(embedder, path.read_text(), "x.md")
    joined = "\n".join(p.text for p in passages)
    assert "```sql\nwith recursive counter(x) as (" in joined
    # Link syntax is reduced to its text; inline code keeps its backticks.
    blocks = markdown_blocks("See [the docs](https://example.com/d) and `code`.")
    assert blocks[0].text == "See the docs and `code`."


def test_tiny_paragraphs_are_merged_with_neighbours(embedder):
    # Real post: its intro sentence ("Here's a query I figured out today...") is tiny.
    path = CORPUS / "sql" / "django-group-permissions-markdown.md"
    doc, passages = _passages(embedder, path.read_text(), "x.md")
    counts = embedder.count_tokens([p.text for p in passages])
    sections = {}
    for p, n in zip(passages, counts):
        sections.setdefault(p.heading_path, []).append(n)
    for heading, sizes in sections.items():
        if len(sizes) > 1:
            # A tiny passage may only remain where merging would overflow the window.
            assert sum(1 for n in sizes if n < MIN_TOKENS) <= 1, (heading, sizes)
    units = [b for b in doc.blocks if b.kind != "heading"]
    assert len(passages) < len(units)


def test_over_long_paragraph_splits_at_sentence_boundaries(embedder):
    # One enormous paragraph made of the real sentences of the wordiest real post.
    def prose(path):
        return " ".join(b.text for b in markdown_blocks(path.read_text()) if b.kind == "paragraph")

    paragraph = " ".join(max((prose(path) for path in corpus_posts()), key=len).split())
    assert embedder.count_tokens([paragraph])[0] > 3 * embedder.max_tokens
    pieces = split_unit(paragraph, embedder.max_tokens, embedder.count_tokens)
    assert len(pieces) >= 3
    assert all(n <= embedder.max_tokens for n in embedder.count_tokens(pieces))
    assert " ".join(pieces) == paragraph  # nothing lost or reordered
    assert all(piece.rstrip()[-1] in ".!?:)`\"'" for piece in pieces[:-1])


def test_over_long_code_block_splits_at_lines_and_keeps_fences(embedder):
    code = "\n".join(f"value_{i} = compute_something({i}, 'argument number {i}')" for i in range(200))
    unit = f"```python\n{code}\n```"
    pieces = split_unit(unit, 100, embedder.count_tokens)
    assert len(pieces) > 5
    assert all(p.startswith("```python\n") and p.endswith("\n```") for p in pieces)
    assert all(n <= 100 for n in embedder.count_tokens(pieces))
    inner = "\n".join(p.split("\n", 1)[1].rsplit("\n", 1)[0] for p in pieces)
    assert inner == code


def test_word_without_boundaries_is_cut_to_fit(embedder):
    blob = "x" * 5000
    pieces = split_unit(blob, 50, embedder.count_tokens)
    assert "".join(pieces) == blob
    assert all(n <= 50 for n in embedder.count_tokens(pieces))


@pytest.mark.parametrize("heading,slug", [
    ("Turning WAL mode off again", "turning-wal-mode-off-again"),
    ("What's new in 3.45?", "whats-new-in-345"),
    ("Über café", "über-café"),
])
def test_slugify_matches_github_style(heading, slug):
    assert slugify(heading) == slug


def test_duplicate_headings_get_numbered_anchors(embedder):
    text = "# T\n\n## Example\n\none two three\n\n## Example\n\nfour five six\n"
    doc, passages = _passages(embedder, text, "x.md")
    assert [p.anchor for p in passages] == ["example", "example-1"]
