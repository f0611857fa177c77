"""Vector, keyword and hybrid retrieval on the real posts."""

from __future__ import annotations

import io
import json

import pytest

from conftest import CORPUS
from ragserver.ingest.pipeline import Ingester
from ragserver.ingest.sources import Source
from ragserver.storage import open_storage
from ragserver.retrieve import retrieve


@pytest.mark.parametrize("query", ['"unbalanced', "NEAR(a b)", "foo*", "-x OR", "AND", "sqlite's ^wal:",
                                   "'; DROP TABLE posts; --", "💥", "   "])
def test_keyword_search_takes_any_text(seeded_conn, query):
    hits = seeded_conn.search_keyword(query, 5)
    assert isinstance(hits, list)


def test_keyword_search_ranks_matching_passages(seeded_conn):
    hits = seeded_conn.search_keyword("journal_mode WAL", 5)
    assert hits[0].source == "sqlite/enabling-wal-mode.md"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_unknown_mode_is_refused(seeded_conn, embedder):
    with pytest.raises(ValueError, match="mode must be one of hybrid, vector, keyword"):
        retrieve(seeded_conn, embedder, "wal", 5, mode="fuzzy")


@pytest.fixture(scope="module")
def titleless(tmp_path_factory, embedder):
    """All 282 posts with their title line removed and an opaque title; the real titles."""
    conn = open_storage(tmp_path_factory.mktemp("titleless") / "t.db", create=True)
    titles, lines = {}, []
    for number, path in enumerate(sorted(CORPUS.rglob("*.md")), 1):
        first, _, body = path.read_text().partition("\n")
        source = path.relative_to(CORPUS).as_posix()
        titles[source] = first.lstrip("# ").strip()
        lines.append(json.dumps({"id": source, "title": f"Post {number}", "content": body}))
    Ingester(conn, embedder).run([Source("-", "stdin", "stdin", stdin=io.StringIO("\n".join(lines)))])
    yield conn, titles
    conn.close()


def _hit_rates(conn, embedder, titles, mode):
    at1 = at5 = 0
    for source, title in titles.items():
        posts = list(dict.fromkeys(h.source for h in retrieve(conn, embedder, title, 50, mode=mode)))
        at1 += posts[:1] == [source]
        at5 += source in posts[:5]
    return at1 / len(titles), at5 / len(titles)


def test_hybrid_beats_vector_only_finding_posts_by_title(titleless, embedder):
    """Measured, not listed: each post's real title must find it (bench/search_quality.py)."""
    conn, titles = titleless
    assert len(titles) == 282
    vector = _hit_rates(conn, embedder, titles, "vector")
    keyword = _hit_rates(conn, embedder, titles, "keyword")
    hybrid = _hit_rates(conn, embedder, titles, "hybrid")
    assert hybrid[0] > vector[0] and hybrid[1] > vector[1], (vector, keyword, hybrid)
    assert hybrid[0] >= keyword[0] and hybrid[1] >= keyword[1], (vector, keyword, hybrid)


def test_keyword_query_leaves_out_stopwords_unless_nothing_else_is_left():
    from ragserver.storage.sqlite import fts_query

    assert fts_query("How do I enable the WAL mode?") == '"enable" OR "wal" OR "mode"'
    assert fts_query("what is it") == '"what" OR "is" OR "it"'
    assert fts_query('say "hi" OR NOT x*') == '"say" OR "hi" OR "not" OR "x"'
