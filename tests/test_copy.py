"""`ragserver copy SRC DST`: a database copied through the Storage protocol, whichever
backend holds the target (the `target` fixture gives one fresh target per backend)."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from conftest import TEST_BACKENDS, make_database
from ragserver import explore, related
from ragserver.copying import as_new_post, record_model
from ragserver.retrieve import retrieve
from ragserver.storage import (ModelInfo, NewPassage, NewPost, backend_of, database_errors,
                               open_storage, redacted, same_target, scrub, writer_lock)

SUMMARY = re.compile(r"copied (\d+) posts / (\d+) passages, skipped (\d+) already there, "
                     r"pruned (\d+); related lists updated: (\d+); [\d.]+s\n")
QUERIES = ["enable WAL mode", "run a script with uv", "python virtual environment",
           "full-text search in SQLite"]
# The source is the seeded SQLite database; the target is of each backend, so every test
# copies SQLite to SQLite and SQLite to PostgreSQL (and the first copies that back to SQLite).
pytestmark = pytest.mark.backends("sqlite")


@pytest.fixture(params=TEST_BACKENDS)
def target(request, tmp_path) -> str:
    """A fresh, empty copy target (nothing there yet) of each storage backend."""
    return make_database(request, request.param, tmp_path, "copy")


@pytest.fixture(scope="module")
def big_db(seeded_db, tmp_path_factory):
    """The seeded posts eight times over (under 0/ to 7/): a source whose copy in small
    transactions lasts long enough to be killed midway."""
    path = tmp_path_factory.mktemp("big") / "big.db"
    src = open_storage(seeded_db, readonly=True)
    dst = open_storage(path, create=True)
    try:
        with dst.transaction():
            dst.set_model_info(src.get_model_info())
        posts = [(post, src.passages_for_post(post.id)) for post in src.list_posts()]
        for copy in range(8):
            with dst.transaction():
                for post, passages in posts:
                    vectors = src.passage_vectors([p.id for p in passages])
                    dst.write_post(replace(as_new_post(post), source=f"{copy}/{post.source}"),
                                   [_new_passage(p, vectors[p.id]) for p in passages], [])
                dst.bump_generation()
        related.refresh(dst)
    finally:
        src.close()
        dst.close()
    return path


def _new_passage(passage, vector) -> NewPassage:
    return NewPassage(position=passage.position, heading_path=passage.heading_path,
                      anchor=passage.anchor, text=passage.text,
                      content_hash=passage.content_hash, vector=vector)


def contents(target) -> dict:
    """What a copy must carry, by source (ids differ between databases): each post's fields,
    its passages with their vectors' bytes, and the counts."""
    db = open_storage(target, readonly=True)
    try:
        posts = {}
        for post in db.list_posts():
            stored = db.passages_for_post(post.id)
            vectors = db.passage_vectors([p.id for p in stored])
            posts[post.source] = (as_new_post(post), [
                (p.position, p.heading_path, p.anchor, p.text, p.content_hash,
                 np.asarray(vectors[p.id], "<f4").tobytes()) for p in stored])
        stats = db.get_stats()
        return {"posts": posts, "model": db.get_model_info(),
                "counts": (stats.posts, stats.passages, stats.vectors, stats.index_rows)}
    finally:
        db.close()


def related_by_source(target) -> dict[str, list[tuple[str, float]]]:
    db = open_storage(target, readonly=True)
    try:
        return {post.source: [(r.source, r.score) for r in db.related_for(post.id)]
                for post in db.list_posts()}
    finally:
        db.close()


def assert_same_related(got, want, by_source=True):
    assert got.keys() == want.keys()
    for source in want:
        if by_source:
            assert [s for s, _ in got[source]] == [s for s, _ in want[source]], source
        assert [x for _, x in got[source]] == pytest.approx([x for _, x in want[source]],
                                                            abs=1e-5), source


def searches(target, embedder, mode) -> list[list[tuple]]:
    db = open_storage(target, readonly=True)
    try:
        return [[(h.source, h.anchor, h.text, round(h.score, 5))
                 for h in retrieve(db, embedder, query, 8, mode=mode)] for query in QUERIES]
    finally:
        db.close()


def assert_same_hits(got, want):
    """The same passages with the same scores, rank by rank; two passages may change places
    only where their scores tie."""
    for found, expected in zip(got, want, strict=True):
        assert [h[3] for h in found] == pytest.approx([h[3] for h in expected], abs=1e-4)
        scores = {h[:3]: h[3] for h in expected}
        for a, b in zip(found, expected):
            assert a[:3] == b[:3] or scores.get(a[:3]) == pytest.approx(a[3], abs=1e-4)


def summary(result) -> tuple[int, ...]:
    found = SUMMARY.fullmatch(result.stdout)
    assert found, result.stdout + result.stderr
    return tuple(int(n) for n in found.groups())


def assert_nothing_there(target):
    """No ragserver database at the target: not created, or created empty of ours."""
    with pytest.raises(database_errors()):
        open_storage(target, readonly=True).close()


def map_by_source(target) -> tuple:
    """A database's topics and each post's topic and place, by source id."""
    storage = open_storage(target, readonly=True)
    try:
        shape = explore.load(storage)
    finally:
        storage.close()
    assert shape.points
    return (shape.topics, sorted((p.source, p.topic, round(p.x, 6), round(p.y, 6))
                                 for p in shape.points))


def test_a_copy_holds_the_same_posts_vectors_search_results_and_related_posts(
        seeded_db, target, tmp_path, runner, embedder):
    result = runner("copy", seeded_db, target, "--quiet", check=True)
    want = contents(seeded_db)
    posts, passages = want["counts"][:2]
    assert summary(result) == (posts, passages, 0, 0, posts)
    assert result.stderr == ""  # --quiet
    got = contents(target)
    assert got == want  # fields, passages, vectors byte for byte, counts, model
    assert got["counts"][3] == passages  # every vector in the index
    # Within a backend the same rankings; across backends the same vector search (keyword
    # scores are BM25 in SQLite, ts_rank in PostgreSQL: tests/test_backends.py).
    across = backend_of(target) != backend_of(seeded_db)
    for mode in ("vector",) if across else ("vector", "keyword"):
        assert_same_hits(searches(target, embedder, mode), searches(seeded_db, embedder, mode))
    assert_same_related(related_by_source(target), related_by_source(seeded_db))
    assert map_by_source(target) == map_by_source(seeded_db)  # topics, labels, places
    # And back: a copy of the copy (a SQLite file again) equals the original.
    back = tmp_path / "back.db"
    runner("copy", target, back, "--quiet", check=True)
    assert contents(back) == want
    again = runner("copy", seeded_db, target, check=True)
    assert summary(again) == (0, 0, posts, 0, 0)
    assert contents(target) == want


def test_progress_goes_to_stderr_a_line_per_transaction(seeded_db, target, runner):
    result = runner("copy", seeded_db, target, env={"RAGSERVER_COMMIT_ROWS": "200"}, check=True)
    posts, passages = contents(seeded_db)["counts"][:2]
    lines = result.stderr.splitlines()
    assert len(lines) >= passages // 200
    assert all(re.fullmatch(rf"\d+ of {posts} posts: \d+ copied, 0 already there", line)
               for line in lines), lines
    assert lines[-1] == f"{posts} of {posts} posts: {posts} copied, 0 already there"
    assert summary(result)[:2] == (posts, passages)


def test_a_copy_resumes_where_the_target_differs(seeded_db, target, runner):
    """What an interrupted or damaged copy leaves (posts missing, a post with passages
    missing, a post that differs) is rewritten; the rest is skipped."""
    runner("copy", seeded_db, target, "--quiet", check=True)
    db = open_storage(target)
    try:
        posts = db.list_posts()
        with db.transaction():
            db.delete_post(posts[0].id)
            db.delete_post(posts[5].id)
            partial = db.passages_for_post(posts[10].id)
            assert len(partial) >= 2
            db.write_post(as_new_post(posts[10]), [], drop=[p.id for p in partial[1:]])
            db.write_post(replace(as_new_post(posts[20]), title="Edited elsewhere"), [], [])
            db.bump_generation()
            # Let related posts see the damaged post: its vector is recomputed from the
            # passages left, under the content hash it keeps.
            db.save_post_vectors([], [posts[10].id])
        related.refresh(db)
    finally:
        db.close()
    result = runner("copy", seeded_db, target, "--quiet", check=True)
    want = contents(seeded_db)
    copied, _, skipped, pruned, _ = summary(result)
    assert (copied, skipped, pruned) == (4, want["counts"][0] - 4, 0)
    assert contents(target) == want
    assert_same_related(related_by_source(target), related_by_source(seeded_db))


def test_a_copy_killed_midway_finishes_when_run_again(big_db, target, runner):
    proc = subprocess.Popen([sys.executable, "-m", "ragserver", "copy", str(big_db), target],
                            env={**os.environ, "RAGSERVER_COMMIT_ROWS": "40"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()  # the first transaction has committed
        assert " of " in first, first + proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "the copy ended before it was killed"
    want = contents(big_db)
    halfway = contents(target)["counts"]
    assert 0 < halfway[0] < want["counts"][0]
    assert halfway[1] == halfway[2] == halfway[3]  # whole transactions only
    result = runner("copy", big_db, target, "--quiet", check=True)
    copied, _, skipped, _, _ = summary(result)
    assert (copied, skipped) == (want["counts"][0] - halfway[0], halfway[0])
    assert contents(target) == want
    # Eight copies of each post tie with each other, so compare the scores only.
    assert_same_related(related_by_source(target), related_by_source(big_db), by_source=False)


def test_posts_the_source_lacks_are_refused_unless_pruned(seeded_db, target, runner):
    runner("copy", seeded_db, target, "--quiet", check=True)
    db = open_storage(target)
    try:
        some = db.list_posts()[0]
        passage = db.passages_for_post(some.id)[0]
        vector = db.passage_vectors([passage.id])[passage.id]
        with db.transaction():
            db.write_post(NewPost("elsewhere/only-here.md", "elsewhere", "Only here", "", None, (),
                                  "x" * 64), [_new_passage(passage, vector)], [])
            db.bump_generation()
    finally:
        db.close()
    before = contents(target)
    refused = runner("copy", seeded_db, target)
    assert refused.returncode == 1 and refused.stdout == ""
    assert f"{redacted(target)} is not a copy of {seeded_db}: it holds 1 posts" in refused.stderr
    assert "elsewhere/only-here.md" in refused.stderr and "--prune" in refused.stderr
    assert contents(target) == before
    pruned = runner("copy", seeded_db, target, "--prune", "--quiet", check=True)
    assert summary(pruned)[:4] == (0, 0, before["counts"][0] - 1, 1)
    assert contents(target) == contents(seeded_db)


def test_counts_that_differ_at_the_end_fail_the_copy(seeded_db, target, tmp_path, runner):
    """A source whose own vector index lacks rows (a reindex killed midway) copies whole,
    and the count check says what differs and what to do."""
    damaged = tmp_path / "damaged.db"
    runner("copy", seeded_db, damaged, "--quiet", check=True)
    db = open_storage(damaged)
    with db.transaction():
        db.conn.execute("DELETE FROM vss_passages WHERE rowid = (SELECT min(id) FROM passages)")
    db.close()
    result = runner("copy", damaged, target)
    passages = contents(seeded_db)["counts"][1]
    assert result.returncode == 1 and summary(result)[1] == passages
    assert (f"the copy does not match its source: index rows {passages - 1} in {damaged}, "
            f"{passages} in {redacted(target)}. {damaged}'s own index holds {passages - 1} rows for "
            f"{passages} vectors: `ragserver reindex` it") in result.stderr


def test_a_target_with_another_model_is_refused(seeded_db, target, runner):
    other = ModelInfo("intfloat/e5-small-v2", 384, "query: ", "passage: ")
    db = open_storage(target, create=True)
    with db.transaction():
        db.set_model_info(other)
    db.close()
    result = runner("copy", seeded_db, target)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "holds passages embedded with 'intfloat/e5-small-v2'" in result.stderr
    assert "was embedded with 'sentence-transformers/all-MiniLM-L6-v2'" in result.stderr
    after = contents(target)
    assert after["model"] == other and after["counts"] == (0, 0, 0, 0)


def test_same_missing_or_foreign_sources_are_refused_and_nothing_changes(
        seeded_db, target, tmp_path, runner):
    want = contents(seeded_db)
    for same in (seeded_db, f"sqlite://{seeded_db}"):
        result = runner("copy", seeded_db, same)
        assert result.returncode == 1 and "SRC and DST are the same database" in result.stderr
    assert contents(seeded_db) == want
    missing = runner("copy", tmp_path / "none.db", target)
    assert missing.returncode == 1 and f"no database at {tmp_path / 'none.db'}" in missing.stderr
    assert not (tmp_path / "none.db").exists()
    foreign = tmp_path / "notes.db"
    sqlite3.connect(foreign).execute("CREATE TABLE notes (text TEXT)").connection.close()
    not_ours = runner("copy", foreign, target)
    assert not_ours.returncode == 1 and "is not a ragserver database" in not_ours.stderr
    junk = tmp_path / "junk.db"
    junk.write_text("not a database at all\n" * 100)
    broken = runner("copy", junk, target)
    assert broken.returncode == 1 and f"cannot open {junk}" in broken.stderr
    for result in (missing, not_ours, broken):
        assert "nothing was copied" in result.stderr and "Traceback" not in result.stderr
    assert_nothing_there(target)


def test_a_held_writer_lock_on_either_side_exits_75(seeded_db, target, runner):
    with writer_lock(target):
        held = runner("copy", seeded_db, target)
    assert held.returncode == 75 and "this run did nothing" in held.stderr
    with writer_lock(seeded_db):
        held_source = runner("copy", seeded_db, target)
    assert held_source.returncode == 75 and str(seeded_db) in held_source.stderr
    assert_nothing_there(target)


def test_passwords_in_urls_are_never_printed(seeded_db, target, runner):
    url = "postgresql://bob:s3cret-pw@127.0.0.1:9/blog"
    as_source = runner("copy", url, target)
    as_target = runner("copy", seeded_db, url)
    for result in (as_source, as_target):
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "s3cret-pw" not in result.stdout + result.stderr
    assert "postgresql://bob:***@127.0.0.1:9/blog" in as_source.stderr


def test_target_helpers_hide_passwords_and_compare_files(tmp_path):
    assert redacted("postgresql://bob:s%40cret@db:5432/blog?sslmode=require&password=x2") == \
        "postgresql://bob:***@db:5432/blog?sslmode=require&password=***"
    assert redacted("postgresql://bob@db/blog") == "postgresql://bob@db/blog"
    assert redacted(tmp_path / "a.db") == str(tmp_path / "a.db")
    url = "postgresql://bob:s%40cret@db/blog"
    assert scrub(f"connecting to {url}: password s@cret refused", url) == \
        "connecting to postgresql://bob:***@db/blog: password *** refused"
    (tmp_path / "a.db").touch()
    os.symlink(tmp_path / "a.db", tmp_path / "link.db")
    assert same_target(tmp_path / "a.db", f"sqlite://{tmp_path}/./link.db")
    assert same_target(tmp_path / "new.db", f"{tmp_path}/sub/../new.db")
    assert not same_target(tmp_path / "a.db", tmp_path / "b.db")
    assert not same_target("postgresql://db/a", "postgresql://db/b")


def test_the_target_gets_its_own_default_vector_index(seeded_db, tmp_path, runner, embedder):
    """SQLite targets take RAGSERVER_VECTOR_INDEX; a kind the backend lacks falls back to
    the backend's default rather than failing."""
    vec = tmp_path / "vec.db"
    runner("copy", seeded_db, vec, "--quiet", env={"RAGSERVER_VECTOR_INDEX": "vec"}, check=True)
    db = open_storage(vec, readonly=True)
    assert db.index_kind() == "vec" and db.get_stats().index_rows == contents(seeded_db)["counts"][1]
    db.close()
    assert searches(vec, embedder, "vector") == searches(seeded_db, embedder, "vector")
    unknown = open_storage(tmp_path / "unknown.db", create=True)
    record_model(unknown, embedder.info, "an-index-sqlite-lacks")
    assert unknown.get_model_info() == embedder.info and unknown.index_kind() == "vss"
    unknown.close()
