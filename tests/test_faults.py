"""Faults an unattended server meets: killed and concurrent ingests, a full disk, read-only
media, broken models and databases, an ingest while the server answers."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import (copy_posts, keyword_rows, make_database, ragserver, rows,
                      running_server)
from ragserver import create_app
from ragserver.storage import open_storage

TOPICS = ["python", "sqlite"]  # 58 posts
KILLS = 10
SEED = 20261125


def _start_ingest(posts, db, **env):
    return subprocess.Popen([sys.executable, "-m", "ragserver", "ingest", str(posts), "--db", str(db),
                             "--quiet"], env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_lock(proc, db, timeout=120) -> None:
    """Until `proc` holds the ingest lock: on SQLite it writes its pid into the lock file once
    it does; on PostgreSQL its session (named after its pid) holds the advisory lock.

    (Probing with flock or pg_try_advisory_lock would itself hold the lock for an instant
    and could turn the ingest away.)
    """
    deadline = time.time() + timeout
    while not _holds_lock(proc, db):
        assert proc.poll() is None, f"ingest ended before taking the lock: {proc.stderr.read()}"
        assert time.time() < deadline, "ingest never took the lock"
        time.sleep(0.02)


def _holds_lock(proc, db) -> bool:
    if not str(db).startswith("postgresql://"):
        lock = Path(str(db) + ".lock")
        return lock.exists() and lock.read_text().strip() == str(proc.pid)
    import psycopg

    with psycopg.connect(str(db), autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = %s",
            (f"ragserver pid {proc.pid}",)).fetchone()[0] > 0


def _exists(db) -> bool:
    """A database is there to check (a PostgreSQL one once an ingest made its tables)."""
    from ragserver.storage import NotADatabase

    if not str(db).startswith("postgresql://"):
        return Path(db).exists()
    try:
        open_storage(db, readonly=True).close()
    except NotADatabase:
        return False
    return True


def check_consistent(path) -> dict:
    """Assert what must hold after any crash; return the counts."""
    conn = open_storage(path)
    try:
        one = lambda sql: rows(conn, sql)[0][0]  # noqa: E731
        if conn.kind == "sqlite":
            assert one("PRAGMA integrity_check") == "ok"
            assert one("SELECT count(*) FROM embeddings WHERE CAST(id AS INTEGER) NOT IN "
                       "(SELECT id FROM passages)") == 0
        n = {"posts": one("SELECT count(*) FROM posts"),
             "passages": one("SELECT count(*) FROM passages"),
             "vectors": conn.count_vectors(), "index": conn.count_index_rows(),
             "fts": keyword_rows(conn)}
        assert n["passages"] == n["vectors"] == n["index"] == n["fts"], n
        assert one("SELECT count(*) FROM passages WHERE post_id NOT IN (SELECT id FROM posts)") == 0
        assert one("SELECT count(*) FROM (SELECT post_id, position FROM passages "
                   "GROUP BY 1, 2 HAVING count(*) > 1) AS twice") == 0
        assert one("SELECT count(*) FROM post_vectors WHERE post_id NOT IN (SELECT id FROM posts)") == 0
        assert one("SELECT count(*) FROM related_posts WHERE related_id NOT IN "
                   "(SELECT id FROM posts) OR post_id NOT IN (SELECT id FROM posts)") == 0
        if n["index"]:  # the index answers, and with passages that exist
            first = one("SELECT min(id) FROM passages")
            assert conn.search_index(conn.passage_vectors([first])[first], 5)
        return n
    finally:
        conn.close()


def snapshot(path):
    """Everything a rerun must reproduce: posts, passages with their vectors, counts."""
    counts = check_consistent(path)
    conn = open_storage(path)
    try:
        posts = sorted(rows(conn, "SELECT source, title, url, content_hash FROM posts"))
        passages = sorted(rows(conn, "SELECT o.source, p.position, p.anchor, p.text, "
                                     "p.content_hash, p.id FROM passages p "
                                     "JOIN posts o ON o.id = p.post_id"))
        vectors = conn.passage_vectors([row[5] for row in passages])
        return posts, [(*row[:5], vectors[row[5]]) for row in passages], counts
    finally:
        conn.close()


def assert_same_as(path, clean) -> None:
    posts, passages, counts = snapshot(path)
    clean_posts, clean_passages, clean_counts = clean
    assert posts == clean_posts
    assert counts == clean_counts
    assert [row[:5] for row in passages] == [row[:5] for row in clean_passages]
    for a, b in zip(passages, clean_passages):
        assert np.allclose(a[5], b[5], atol=1e-4)


@pytest.fixture(scope="module")
def clean(request, backend, tmp_path_factory):
    """A snapshot of the topics ingested in one uninterrupted run, and its seconds after the lock."""
    root = tmp_path_factory.mktemp("clean")
    posts = copy_posts(root / "posts", TOPICS)
    db = make_database(request, backend, root, "clean")
    proc = _start_ingest(posts, db)
    _wait_for_lock(proc, db)
    started = time.monotonic()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return snapshot(db), time.monotonic() - started


def _change_the_blog(posts, rng, trial, hidden, aside):
    """Retitle 15 posts (every passage of a post embeds its title: all re-embed), bring back
    the posts hidden last time, hide two others (pruned)."""
    for path in hidden:
        shutil.move(aside / f"{path.parent.name}-{path.name}", path)
    files = sorted(posts.rglob("*.md"))
    for path in rng.sample(files, 15):
        text = path.read_text()
        path.write_text(re.sub(r"^# (.+)$", rf"# \1 (revised in trial {trial})", text, count=1,
                               flags=re.M))
    hide = rng.sample(files, 2)
    for path in hide:
        shutil.move(path, aside / f"{path.parent.name}-{path.name}")
    return hide


def test_kill_9_at_random_points_then_rerun_equals_a_clean_run(tmp_path, clean, new_database):
    """Ten SIGKILLs at random moments of ingests that add, re-embed and prune posts."""
    clean_snapshot, clean_seconds = clean
    rng = random.Random(SEED)
    posts = copy_posts(tmp_path / "posts", TOPICS)
    aside = tmp_path / "aside"
    aside.mkdir()
    db = new_database
    hidden, kills, finished, trial = [], 0, 0, 0
    estimate = clean_seconds  # how long a run lasts after taking the lock: the last whole run's time
    while kills < KILLS:
        trial += 1
        assert trial <= 4 * KILLS, f"only {kills} kills landed in {trial - 1} runs"
        if trial > 1:  # the first run starts from nothing; later ones find a changed blog
            hidden = _change_the_blog(posts, rng, trial, hidden, aside)
        proc = _start_ingest(posts, db, RAGSERVER_COMMIT_ROWS=str(rng.choice([16, 40, 100])))
        _wait_for_lock(proc, db)
        started = time.monotonic()
        try:
            proc.wait(timeout=rng.uniform(0, estimate))
            finished += 1
            estimate = time.monotonic() - started
            assert proc.returncode == 0, proc.stderr.read()
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL: no cleanup, no rollback by the process itself
            proc.wait()
            kills += 1
        proc.stdout.close()
        proc.stderr.close()
        if _exists(db):
            check_consistent(db)
    # The blog as it was: every edit undone, every post back. A rerun must converge.
    shutil.rmtree(posts)
    copy_posts(posts, TOPICS)
    rerun = ragserver("ingest", posts, "--db", db, "--quiet", check=True)
    assert "0 skipped" in rerun.stdout
    assert_same_as(db, clean_snapshot)
    again = ragserver("ingest", posts, "--db", db, "--quiet", check=True)
    assert "0 added, 0 updated, 58 unchanged, 0 deleted" in again.stdout, (kills, finished)


def test_second_concurrent_ingest_exits_clearly(tmp_path, new_database):
    posts = copy_posts(tmp_path / "posts", TOPICS)
    db = new_database
    first = _start_ingest(posts, db)
    try:
        _wait_for_lock(first, db)
        second = ragserver("ingest", posts, "--db", db)
        assert second.returncode == 75
        assert "another ingest is already running" in second.stderr
        assert str(first.pid) in second.stderr
        reindex = ragserver("reindex", "--db", db)
        assert reindex.returncode in (1, 75)  # 1: no database yet, 75: locked
        assert "Traceback" not in second.stderr + reindex.stderr
    finally:
        out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert "posts: 58 added" in out
    check_consistent(db)


def _unshare_available() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0
    except OSError:
        return False


needs_mounts = pytest.mark.skipif(not _unshare_available(),
                                  reason="needs `unshare -m` (root) to mount a small or read-only file system")


def _in_mount_namespace(script: str, **env) -> subprocess.CompletedProcess:
    """Run a shell script in a private mount namespace: its mounts vanish when it ends."""
    path = f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"
    return subprocess.run(["unshare", "-m", "sh", "-euc", script], capture_output=True, text=True,
                          env={**os.environ, "PATH": path, **env}, timeout=600)


@needs_mounts
def test_full_disk_during_ingest_stops_clearly_and_a_rerun_finishes(tmp_path, clean):
    """A 3 MB file system fills up mid-ingest: a clear error, a consistent database."""
    posts = copy_posts(tmp_path / "posts", TOPICS)
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    result = _in_mount_namespace(
        'mount -t tmpfs -o size=3m tmpfs "$DISK"\n'
        'status=0; python -m ragserver ingest "$POSTS" --db "$DISK/r.db" --quiet || status=$?\n'
        'cp "$DISK"/r.db* "$OUT"/\n'
        'exit $status\n', DISK=str(disk), OUT=str(out), POSTS=str(posts))
    assert result.returncode == 1, result.stderr
    assert "ingest stopped: database or disk is full" in result.stderr
    assert "run the same command again" in result.stderr
    assert "Traceback" not in result.stderr
    db = out / "r.db"
    partial = check_consistent(db)
    assert 0 < partial["posts"] < 58, partial  # it did stop part-way
    rerun = ragserver("ingest", posts, "--db", db, "--quiet", check=True)
    assert f"{partial['posts']} unchanged" in rerun.stdout
    assert_same_as(db, clean[0])


@needs_mounts
@pytest.mark.backends("sqlite")  # a file on read-only media; PostgreSQL's files are its own
def test_read_only_media_refuse_ingest_and_still_serve(tmp_path, seeded_db):
    """A database on a read-only mount: ingest says so and changes nothing; search, the API
    and the pages work."""
    media = tmp_path / "media"
    media.mkdir()
    shutil.copy(seeded_db, media / "r.db")
    before = (media / "r.db").read_bytes()
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import json, sys\n"
        "from ragserver import create_app\n"
        "client = create_app({'db': sys.argv[1]}).test_client()\n"
        "search = client.get('/api/search?q=enable+WAL+mode')\n"
        "page = client.get('/search?q=WAL')\n"
        "health = client.get('/healthz')\n"
        "print(json.dumps([search.status_code, search.get_json()['results'][0]['source'],\n"
        "                  page.status_code, health.status_code]))\n")
    posts = copy_posts(tmp_path / "posts", ["uv"])
    result = _in_mount_namespace(
        'mount --bind -o ro "$MEDIA" "$MEDIA"\n'
        'status=0; python -m ragserver ingest "$POSTS" --db "$MEDIA/r.db" || status=$?\n'
        'echo "ingest=$status"\n'
        'python -m ragserver search "enable WAL mode" --db "$MEDIA/r.db" -n 1 --json\n'
        'python "$PROBE" "$MEDIA/r.db"\n',
        MEDIA=str(media), POSTS=str(posts), PROBE=str(probe),
        RAGSERVER_SEARCH_RATE="0")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "ingest=1"
    assert "cannot write in" in result.stderr and "Read-only file system" in result.stderr
    assert "nothing was changed" in result.stderr and "Traceback" not in result.stderr
    assert json.loads(lines[1])["source"] == "sqlite/enabling-wal-mode.md"
    assert json.loads(lines[-1]) == [200, "sqlite/enabling-wal-mode.md", 200, 200]
    assert (media / "r.db").read_bytes() == before


@pytest.mark.backends("sqlite")  # PostgreSQL's: tests/test_backends.py
def test_broken_database_and_models_get_clear_errors_never_tracebacks(tmp_path, seeded_db,
                                                                      posts_dir):
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database" * 500)
    app = create_app({"db": str(corrupt), "search_rate": 0})
    client = app.test_client()
    api = client.get("/api/search?q=sqlite")
    assert api.status_code == 503 and "The posts cannot be read" in api.get_json()["error"]
    assert api.headers["Retry-After"]
    page = client.get("/search?q=sqlite")
    assert page.status_code == 503 and b"The posts cannot be read" in page.data
    assert b"Traceback" not in page.data
    ask = client.post("/api/ask", json={"question": "What is WAL mode?"})
    assert b"event: error" in ask.data and b"Traceback" not in ask.data
    ingest = ragserver("ingest", posts_dir, "--db", corrupt)
    assert ingest.returncode == 1 and "not a database" in ingest.stderr
    assert "Traceback" not in ingest.stderr
    assert corrupt.read_bytes() == b"this is not a database" * 500

    broken_model = tmp_path / "model"
    broken_model.mkdir()
    (broken_model / "config.json").write_text("{ not json")
    env = {"RAGSERVER_EMBEDDING_MODEL": str(broken_model)}
    ingest = ragserver("ingest", posts_dir, "--db", tmp_path / "new.db", env=env)
    assert ingest.returncode == 1 and str(broken_model) in ingest.stderr
    assert "Traceback" not in ingest.stderr
    assert not (tmp_path / "new.db").exists()  # nothing half-made
    app = create_app({"db": str(seeded_db), "embedding_model": str(broken_model), "search_rate": 0})
    api = app.test_client().get("/api/search?q=sqlite")
    assert api.status_code == 503 and "The search model cannot be loaded" in api.get_json()["error"]


def test_server_answers_during_an_ingest_and_serves_new_posts_without_restart(
        tmp_path, new_database, backend):
    """Searches keep succeeding while another process ingests; the new posts appear after
    its commits with no restart (the sqlite-vss readers reopen; PostgreSQL readers see
    every commit). On PostgreSQL the server runs two workers, as a scaled site would."""
    posts = copy_posts(tmp_path / "posts", ["sqlite"])
    db = new_database
    ragserver("ingest", posts, "--db", db, "--quiet", check=True)
    new_title = "Running a uv script with inline dependencies"  # what a uv post answers
    query = urllib.parse.urlencode({"q": new_title, "n": 3})
    workers = {"WEB_CONCURRENCY": "2" if backend == "postgresql" else "1"}
    with running_server(db, tmp_path / "server.log", workers) as url:
        before = json.load(urllib.request.urlopen(f"{url}/api/search?{query}", timeout=60))
        assert not any(r["source"].startswith("uv/") for r in before["results"])
        copy_posts(posts, ["uv"])
        failures, answered, stop = [], [0], threading.Event()

        def search_all_the_time():
            while not stop.is_set():
                try:
                    with urllib.request.urlopen(f"{url}/api/search?q=WAL+mode", timeout=60) as r:
                        assert r.status == 200 and json.load(r)["results"]
                        answered[0] += 1
                except Exception as error:  # noqa: BLE001 - every failure is the finding
                    failures.append(repr(error))

        searchers = [threading.Thread(target=search_all_the_time) for _ in range(3)]
        for thread in searchers:
            thread.start()
        try:
            ingest = ragserver("ingest", posts, "--db", db, "--quiet",
                               env={"RAGSERVER_COMMIT_ROWS": "20"}, check=True)
        finally:
            stop.set()
            for thread in searchers:
                thread.join()
        assert "added" in ingest.stdout and failures == [], failures[:3]
        assert answered[0] > 0
        after = json.load(urllib.request.urlopen(f"{url}/api/search?{query}", timeout=60))
        assert after["results"][0]["source"].startswith("uv/"), after["results"][0]
