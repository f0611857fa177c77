"""The ingest pipeline against the real model, real SQLite + sqlite-vss and real posts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import CORPUS, MODEL, keyword_rows, rows
from ragserver.ingest.chunking import embedding_text
from ragserver.ingest.pipeline import Ingester, reembed_all
from ragserver.ingest.sources import open_source
from ragserver.storage import ModelMismatchError, open_storage
from ragserver.embedder import SentenceTransformerEmbedder
from ragserver.retrieve import search_passages


def run_ingest(conn, embedder, *specs, prune=None, commit_rows=1000):
    sources = [open_source(str(s)) for s in specs]
    return Ingester(conn, embedder, commit_rows=commit_rows).run(sources, prune=prune)


def counts(conn):
    return {
        "posts": rows(conn, "SELECT count(*) FROM posts")[0][0],
        "passages": rows(conn, "SELECT count(*) FROM passages")[0][0],
        "vectors": conn.count_vectors(),
        "fts": keyword_rows(conn),
        "index": conn.count_index_rows(),
    }


def test_first_ingest_stores_everything_consistently(db, embedder, posts_dir):
    summary = run_ingest(db, embedder, posts_dir)
    n_posts = len(list(posts_dir.rglob("*.md")))
    assert (summary.added, summary.updated, summary.unchanged) == (n_posts, 0, 0)
    c = counts(db)
    assert c["posts"] == n_posts
    assert c["passages"] == c["vectors"] == c["fts"] == c["index"] == summary.embedded > n_posts
    vectors = db.passage_vectors([p.id for p in db.passages_for_post(db.list_posts()[0].id)])
    assert all(v.shape == (384,) and abs(np.linalg.norm(v) - 1) < 1e-4 for v in vectors.values())
    info = db.get_model_info()
    assert (info.name, info.dimension) == (MODEL, 384)


@pytest.mark.backends("sqlite")
def test_sqlite_file_holds_llm_compatible_vectors(db, embedder, posts_dir):
    run_ingest(db, embedder, posts_dir)
    assert db.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # Vectors: little-endian float32, unit length, the model's dimension.
    blob, metadata, content = db.conn.execute(
        "SELECT embedding, metadata, content FROM embeddings LIMIT 1").fetchone()
    vector = np.frombuffer(blob, dtype="<f4")
    assert vector.shape == (384,) and abs(np.linalg.norm(vector) - 1) < 1e-4
    meta = json.loads(metadata)
    assert meta["source"].startswith("sqlite/") and meta["title"]
    assert db.conn.execute("SELECT text FROM passages WHERE text = ?", (content,)).fetchone()
    info = db.get_model_info()
    assert (info.name, info.dimension) == (MODEL, 384)


def test_rerun_embeds_nothing(db, embedder, posts_dir):
    first = run_ingest(db, embedder, posts_dir)
    ids = rows(db, "SELECT id, content_hash FROM passages ORDER BY id")
    generation = db.get_generation()
    again = run_ingest(db, embedder, posts_dir)
    assert (again.added, again.updated, again.deleted, again.embedded) == (0, 0, 0, 0)
    assert again.unchanged == first.added
    assert rows(db, "SELECT id, content_hash FROM passages ORDER BY id") == ids
    assert db.get_generation() == generation  # readers need not reopen


def test_editing_one_post_reembeds_only_its_changed_passages(db, embedder, posts_dir):
    run_ingest(db, embedder, posts_dir)
    post = posts_dir / "sqlite" / "enabling-wal-mode.md"
    others_before = rows(
        db, "SELECT p.id, p.content_hash FROM passages p JOIN posts o ON o.id = p.post_id "
        "WHERE o.source != 'sqlite/enabling-wal-mode.md' ORDER BY p.id")
    post_id = db.get_post("sqlite/enabling-wal-mode.md").id
    before = {p.content_hash: p.id for p in db.passages_for_post(post_id)}
    added = ("\n\nI later found that `PRAGMA wal_checkpoint(TRUNCATE);` shrinks the write-ahead "
             "log file back to zero bytes, which is handy before copying the database elsewhere.\n")
    post.write_text(post.read_text() + added)
    summary = run_ingest(db, embedder, posts_dir)
    assert (summary.updated, summary.added, summary.unchanged) == (1, 0, 26)
    after = db.passages_for_post(post_id)
    kept = [p for p in after if p.content_hash in before]
    assert kept and all(before[p.content_hash] == p.id for p in kept)  # same rows, no re-embed
    assert summary.embedded == len(after) - len(kept) <= 2
    assert any("wal_checkpoint(TRUNCATE)" in p.text for p in after)
    others_after = rows(
        db, "SELECT p.id, p.content_hash FROM passages p JOIN posts o ON o.id = p.post_id "
        "WHERE o.source != 'sqlite/enabling-wal-mode.md' ORDER BY p.id")
    assert others_after == others_before
    c = counts(db)
    assert c["passages"] == c["vectors"] == c["fts"] == c["index"]


def test_deleted_post_is_pruned_with_everything_derived(db, embedder, posts_dir):
    run_ingest(db, embedder, posts_dir)
    gone = db.get_post("sqlite/simple-recursive-cte.md")
    gone_ids = [p.id for p in db.passages_for_post(gone.id)]
    (posts_dir / "sqlite" / "simple-recursive-cte.md").unlink()
    kept = run_ingest(db, embedder, posts_dir, prune=False)
    assert kept.deleted == 0 and db.get_post(gone.source) is not None
    summary = run_ingest(db, embedder, posts_dir)
    assert summary.deleted == 1 and db.get_post(gone.source) is None
    marks = ",".join("?" * len(gone_ids))
    derived = [("passages", "id")]
    if db.kind == "sqlite":  # its words, vectors and index rows live in tables of their own
        derived += [("passages_fts", "rowid"), ("vss_passages_data", "rowid")]
        assert rows(db, f"SELECT count(*) FROM embeddings WHERE id IN ({marks})",
                    [str(i) for i in gone_ids])[0][0] == 0
    for table, column in derived:
        assert rows(db, f"SELECT count(*) FROM {table} WHERE {column} IN ({marks})",
                    gone_ids)[0][0] == 0, table
    assert db.passage_vectors(gone_ids) == {}
    c = counts(db)
    assert c["passages"] == c["vectors"] == c["fts"] == c["index"]
    hits = search_passages(db, embedder, "The simplest recursive CTE", 20)
    assert gone.source not in {h.source for h in hits}


def test_skipped_file_is_not_pruned(db, embedder, posts_dir):
    run_ingest(db, embedder, posts_dir)
    post = posts_dir / "sqlite" / "null-case.md"
    post.write_bytes(b"\xff\xfe broken encoding now")
    summary = run_ingest(db, embedder, posts_dir)
    assert summary.deleted == 0 and len(summary.skipped) == 1
    assert db.get_post("sqlite/null-case.md") is not None


def test_search_finds_post_by_its_title(db, embedder, posts_dir):
    run_ingest(db, embedder, posts_dir)
    hits = search_passages(db, embedder, "Enabling WAL mode for SQLite database files", 5)
    assert hits[0].source == "sqlite/enabling-wal-mode.md"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(-1.0 <= h.score <= 1.0 for h in hits)


def test_prefixes_are_applied_when_embedding_and_never_stored(tmp_path, embedder, posts_dir):
    e5_style = SentenceTransformerEmbedder(MODEL, "query: ", "passage: ")
    conn = open_storage(tmp_path / "prefixed.db", create=True)
    run_ingest(conn, e5_style, posts_dir / "sqlite")
    info = conn.get_model_info()
    assert (info.query_prefix, info.passage_prefix) == ("query: ", "passage: ")
    texts = [r[0] for r in conn.conn.execute("SELECT text FROM passages")]
    assert not any(t.startswith("passage: ") for t in texts)
    assert conn.conn.execute("SELECT count(*) FROM embeddings WHERE content LIKE 'passage: %'").fetchone()[0] == 0
    pid, text, heading_path, title, blob = conn.conn.execute(
        "SELECT p.id, p.text, p.heading_path, o.title, e.embedding FROM passages p "
        "JOIN posts o ON o.id = p.post_id JOIN embeddings e ON e.id = CAST(p.id AS TEXT) "
        "ORDER BY p.id LIMIT 1").fetchone()
    stored = np.frombuffer(blob, dtype="<f4")
    full = embedding_text(title, json.loads(heading_path), text)
    with_prefix = embedder.model.encode(["passage: " + full], normalize_embeddings=True)[0]
    without = embedder.model.encode([full], normalize_embeddings=True)[0]
    assert np.allclose(stored, with_prefix, atol=1e-4)
    assert not np.allclose(stored, without, atol=1e-3)
    query = e5_style.embed_query("WAL")
    assert np.allclose(query, embedder.model.encode(["query: WAL"], normalize_embeddings=True)[0],
                       atol=1e-5)
    conn.close()


def test_other_model_is_refused_then_reindex_switches(new_database, embedder, posts_dir):
    conn = open_storage(new_database, create=True)
    run_ingest(conn, embedder, posts_dir)
    other = SentenceTransformerEmbedder(MODEL, "query: ", "passage: ")
    with pytest.raises(ModelMismatchError, match="ragserver reindex"):
        run_ingest(conn, other, posts_dir)
    with pytest.raises(ModelMismatchError, match="ragserver reindex"):
        search_passages(conn, other, "WAL", 3)
    before = counts(conn)
    assert reembed_all(conn, other) == before["passages"]
    assert counts(conn) == before
    assert conn.get_model_info() == other.info
    assert search_passages(conn, other, "Enabling WAL mode for SQLite database files", 1)[0].source \
        == "sqlite/enabling-wal-mode.md"
    # A rerun re-splits every post for the new prefix (it takes a few tokens of the
    # window), reusing the vectors of the passages that come out the same.
    summary = run_ingest(conn, other, posts_dir)
    assert summary.updated == before["posts"]
    assert summary.reused > 0.9 * before["passages"]
    assert summary.embedded + summary.reused == counts(conn)["passages"]
    conn.close()


def test_rebuild_index_from_stored_vectors(db, embedder, posts_dir):
    run_ingest(db, embedder, posts_dir)
    expected = [h.passage_id for h in search_passages(db, embedder, "window functions", 5)]
    db.drop_index()
    assert db.count_index_rows() == 0
    without_index = [h.passage_id for h in search_passages(db, embedder, "window functions", 5)]
    # SQLite: no crash on an empty sqlite-vss index, and nothing found; PostgreSQL scans
    # every vector until the HNSW index is back.
    assert without_index == ([] if db.kind == "sqlite" else expected)
    assert db.rebuild_index(commit_rows=100) == db.count_vectors()
    assert [h.passage_id for h in search_passages(db, embedder, "window functions", 5)] == expected


def test_sqlite_vec_index_answers_like_sqlite_vss_and_reindex_switches(tmp_path, embedder, posts_dir):
    """RAGSERVER_VECTOR_INDEX=vec: same hits as vss (both exact), edits follow, reindex switches."""
    conn = open_storage(tmp_path / "vec.db", create=True)
    sources = [open_source(str(posts_dir))]
    Ingester(conn, embedder, vector_index="vec").run(sources)
    assert conn.vector_index().kind == "vec" and not conn.index_exists_of("vss")
    assert counts(conn)["index"] == counts(conn)["vectors"] > 0
    assert conn.get_stats().index_bytes >= counts(conn)["vectors"] * 384 * 4
    (posts_dir / "sqlite" / "enabling-wal-mode.md").unlink()
    assert Ingester(conn, embedder, vector_index="vec").run(sources).deleted == 1
    assert counts(conn)["index"] == counts(conn)["vectors"]
    query = "How do I turn on write-ahead logging?"
    with_vec = search_passages(conn, embedder, query, 8)
    assert conn.rebuild_index(vector_index="vss") == counts(conn)["vectors"]
    assert conn.vector_index().kind == "vss" and not conn.index_exists_of("vec")
    with_vss = search_passages(conn, embedder, query, 8)
    assert [h.passage_id for h in with_vec] == [h.passage_id for h in with_vss]
    assert [h.score for h in with_vec] == pytest.approx([h.score for h in with_vss], abs=1e-4)
    conn.drop_index()
    conn.set_vector_index("vec")
    conn.create_index(384)
    assert search_passages(conn, embedder, query, 8) == []  # an empty vec0 index is fine too


def test_searching_an_empty_database_does_not_crash(new_database, embedder):
    conn = open_storage(new_database, create=True)
    assert search_passages(conn, embedder, "anything", 5) == []
    with conn.transaction():
        conn.set_model_info(embedder.info)
    assert search_passages(conn, embedder, "anything", 5) == []
    conn.close()


@pytest.mark.parametrize("kind,reopens", [("vss", 1), ("vec", 0)])
def test_reader_sees_another_connections_writes(tmp_path, embedder, posts_dir, kind, reopens):
    """A sqlite-vss reader reopens when the index changed; a sqlite-vec one need not."""
    path = tmp_path / "shared.db"
    writer = open_storage(path, create=True)
    first = posts_dir / "sqlite"
    later = CORPUS / "uv"
    Ingester(writer, embedder, vector_index=kind).run([open_source(str(first))])
    reader = open_storage(path)
    assert search_passages(reader, embedder, "Enabling WAL mode", 1)
    Ingester(writer, embedder).run([open_source(str(later))], prune=False)
    reader.refresh()
    conn = reader
    assert reader.reopened == reopens
    assert conn.count_index_rows() == writer.count_vectors()
    hits = search_passages(conn, embedder, "Using uv to run Python scripts", 30)
    assert any(not h.source.startswith("sqlite/") for h in hits)
    reader.close()
    writer.close()


def test_commits_in_batches_of_commit_rows(db, embedder, posts_dir):
    """Many small transactions (each bumps the generation) instead of one huge one."""
    summary = run_ingest(db, embedder, posts_dir, commit_rows=50)
    assert db.get_generation() >= summary.embedded // 50
    c = counts(db)
    assert c["passages"] == c["vectors"] == c["index"]


@pytest.mark.backends("sqlite")
def test_llm_similar_reads_the_passages_collection(db, embedder, posts_dir, tmp_path):
    llm = shutil.which("llm") or str(__import__("pathlib").Path(sys.executable).parent / "llm")
    run_ingest(db, embedder, posts_dir)
    pid = db.get_post("sqlite/enabling-wal-mode.md").id
    first = db.passages_for_post(pid)[0].id
    db_file = db.conn.execute("PRAGMA database_list").fetchone()[2]
    result = subprocess.run([llm, "similar", "passages", str(first), "-d", db_file, "-n", "3"],
                            capture_output=True, text=True, env={"LLM_USER_PATH": str(tmp_path)},
                            timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 3 and all(r["metadata"]["source"] for r in rows)
    # The schema is unchanged by llm opening it.
    assert db.count_vectors() == db.count_index_rows()
