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


def test_a_step_in_STEPS_runs_on_every_search(seeded_conn, embedder, monkeypatch):
    """A retrieval step is a function (db, query, hits) -> hits plus its place in STEPS."""
    from ragserver import retrieve as retrieval
    from ragserver.retrieve import search_posts

    def without_sqlite_posts(db, query, hits):
        return [h for h in hits if not h.source.startswith("sqlite/")]

    before = [g[0].source for g in search_posts(seeded_conn, embedder, "enable WAL mode", 5)]
    assert before[0].startswith("sqlite/")
    monkeypatch.setattr(retrieval, "STEPS", retrieval.STEPS + (without_sqlite_posts,))
    for mode in ("hybrid", "vector", "keyword"):
        after = [g[0].source for g in search_posts(seeded_conn, embedder, "enable WAL mode", 5,
                                                     mode=mode)]
        assert after and not any(s.startswith("sqlite/") for s in after), mode


def test_a_ranking_in_RANKINGS_and_MODES_is_a_new_mode(seeded_conn, embedder, monkeypatch):
    """A new ranking is a function (db, query, k) -> hits plus its row in RANKINGS and MODES."""
    from ragserver import retrieve as retrieval

    def by_title(db, query, k):
        return [h for h in db.search_keyword(query.text, k * 4) if query.text.lower()
                in h.title.lower()][:k]

    monkeypatch.setitem(retrieval.RANKINGS, "title", by_title)
    monkeypatch.setitem(retrieval.MODES, "title", ("title",))
    monkeypatch.setitem(retrieval.MODES, "meaning+title", ("vector", "title"))
    titled = retrieve(seeded_conn, embedder, "WAL", 5, mode="title")
    assert titled and all("wal" in h.title.lower() for h in titled)
    fused = retrieve(seeded_conn, embedder, "WAL", 5, mode="meaning+title")
    assert fused and all(h.similarity is not None for h in fused)
