"""SQLite and PostgreSQL side by side: the same blog answers the same searches; and what the
PostgreSQL backend does on its own (migrations, messages, its writer lock)."""

from __future__ import annotations

import psycopg
import pytest

from conftest import copy_posts, make_database, ragserver
from ragserver.ingest.pipeline import Ingester
from ragserver.ingest.sources import open_source
from ragserver.retrieve import retrieve, search_posts
from ragserver.storage import NotADatabase, open_storage
from ragserver.storage.postgres_connection import MIGRATIONS, SCHEMA_VERSION

QUESTIONS = ["How do I enable WAL mode?", "recursive common table expressions",
             "What does VACUUM do when the disk is full?", "compile a newer SQLite on Ubuntu",
             "json functions in sqlite", "full-text search ranking", "window functions",
             "How do I list the tables of a database?"]


@pytest.fixture(scope="module")
def both(request, tmp_path_factory, embedder):
    """One topic of real posts (27) ingested into SQLite and into PostgreSQL."""
    root = tmp_path_factory.mktemp("both")
    posts = copy_posts(root / "posts", ["sqlite"])
    storages = {}
    for backend in ("sqlite", "postgresql"):
        storage = open_storage(make_database(request, backend, root, "both"), create=True)
        Ingester(storage, embedder).run([open_source(str(posts), base_url="https://til.example/")])
        storages[backend] = storage
    titles = [p.title for p in storages["sqlite"].list_posts()]
    yield storages, titles
    for storage in storages.values():
        storage.close()


def _ranked(hits):
    return [((h.source, h.heading_path, h.text), h.similarity) for h in hits]


def test_vector_search_gives_the_same_top_results_on_both_backends(both, embedder):
    storages, titles = both
    for query in QUESTIONS + titles:
        lite, pg = (_ranked(retrieve(s, embedder, query, 10, mode="vector"))
                    for s in (storages["sqlite"], storages["postgresql"]))
        assert len(lite) == len(pg) == 10, query
        for (a, score_a), (b, score_b) in zip(lite, pg):
            assert score_a == pytest.approx(score_b, abs=1e-4), query
            if a != b:  # only where two passages tie
                assert dict(lite).get(b) == pytest.approx(score_b, abs=1e-4), query


def test_hybrid_and_keyword_search_find_the_same_posts_for_titles(both, embedder):
    """Keyword ranks differ (BM25 against ts_rank), but a post's title finds that post first
    in hybrid search on both, and among the first three by keywords alone."""
    storages, titles = both
    for title in titles:
        tops = {b: search_posts(s, embedder, title, 1)[0][0].source
                for b, s in storages.items()}
        assert tops["sqlite"] == tops["postgresql"], title
        for storage in storages.values():
            found = [h.title for h in retrieve(storage, embedder, title, 3, mode="keyword")]
            assert title in found, (storage.kind, title)


def test_related_posts_are_the_same_on_both_backends(both):
    storages, _ = both
    lists = {}
    for backend, storage in storages.items():
        lists[backend] = {post.source: [(r.source, r.score) for r in storage.related_for(post.id)]
                          for post in storage.list_posts()}
    assert lists["sqlite"].keys() == lists["postgresql"].keys()
    for source, ranked in lists["sqlite"].items():
        other = lists["postgresql"][source]
        assert [s for s, _ in ranked] == [s for s, _ in other], source
        assert [x for _, x in ranked] == pytest.approx([x for _, x in other], abs=1e-5)


@pytest.mark.backends("postgresql")
def test_an_older_schema_is_migrated_by_a_writer_and_named_to_a_reader(new_database):
    """A database made by the first migration only: a reader says which command migrates
    it; a writing open applies the rest, once."""
    with psycopg.connect(new_database, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute("CREATE TABLE ragserver_migrations (version INTEGER PRIMARY KEY, "
                     "name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        version, name, sql = MIGRATIONS[0]
        conn.execute(sql)
        conn.execute("INSERT INTO ragserver_migrations (version, name) VALUES (%s, %s)",
                     (version, name))
    with pytest.raises(NotADatabase, match=f"schema version 1, older than this ragserver's "
                                           f"{SCHEMA_VERSION}: any writing command"):
        open_storage(new_database, readonly=True)
    writer = open_storage(new_database)
    assert writer.get_schema_version() == SCHEMA_VERSION
    writer.close()
    reader = open_storage(new_database, readonly=True)
    assert reader.get_schema_version() == SCHEMA_VERSION
    reader.close()
    with psycopg.connect(new_database) as conn:
        assert conn.execute("SELECT count(*) FROM ragserver_migrations").fetchone()[0] == \
            len(MIGRATIONS)


@pytest.mark.backends("postgresql")
def test_commands_on_a_bad_url_say_what_is_wrong_and_never_show_the_password(
        new_database, posts_dir):
    refused = new_database.replace("postgres:@", "postgres:hunter2@").replace(
        "?host=", "_missing?host=")
    for args in (["ingest", posts_dir, "--quiet"], ["search", "wal"], ["stats"]):
        result = ragserver(*args, "--db", refused)
        assert result.returncode == 1, result.stderr
        assert "does not exist" in result.stderr and "hunter2" not in result.stderr
        assert "Traceback" not in result.stderr
    empty = ragserver("search", "wal", "--db", new_database)
    assert empty.returncode == 1 and "holds no ragserver database" in empty.stderr
    down = ragserver("stats", "--db", "postgresql://blog:hunter2@127.0.0.1:1/blog")
    assert down.returncode == 1 and "cannot connect to postgresql://blog:***@127.0.0.1:1/blog" \
        in down.stderr and "hunter2" not in down.stderr


def test_the_web_app_on_an_unreachable_server_says_so_without_the_password(embedder):
    from ragserver import create_app

    url = "postgresql://blog:hunter2@127.0.0.1:1/blog"
    client = create_app({"db": url, "search_rate": 0}, embedder=embedder).test_client()
    api = client.get("/api/search?q=sqlite")
    assert api.status_code == 503 and "The posts cannot be read" in api.get_json()["error"]
    health = client.get("/healthz")
    assert health.status_code == 503 and health.json["status"] == "database error"
    assert health.json["database"] == "postgresql://blog:***@127.0.0.1:1/blog"
    ask = client.post("/api/ask", json={"question": "What is WAL mode?"})
    assert b"event: error" in ask.data
    for body in (api.data, health.data, ask.data, client.get("/search?q=wal").data):
        assert b"hunter2" not in body and b"Traceback" not in body
