"""Related posts: computed at the end of each ingest, incrementally, served as JSON, HTML and CLI."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from conftest import CORPUS, clone_database, copy_posts, make_database, ragserver
from ragserver.ingest.pipeline import Ingester
from ragserver.ingest.sources import open_source
from ragserver import create_app, related
from ragserver.storage import open_storage

BASE = "https://til.example/"

pytestmark = pytest.mark.app({"allowed_origins": "https://blog.example"})


def lists_by_source(conn) -> dict[str, list[tuple[str, float]]]:
    names = {p.id: p.source for p in conn.list_posts()}
    return {names[pid]: [(names[rid], score) for rid, score in ranked]
            for pid, ranked in conn.related_lists().items()}


def recomputed_from_scratch(conn) -> dict[str, list[tuple[str, float]]]:
    with conn.transaction():
        conn.conn.execute("DELETE FROM post_vectors")
        conn.conn.execute("DELETE FROM related_posts")
    related.refresh(conn)
    return lists_by_source(conn)


def assert_same_lists(got, want):
    assert got.keys() == want.keys()
    for source in want:
        assert [s for s, _ in got[source]] == [s for s, _ in want[source]], source
        # Float32 products in differently shaped blocks may differ in the last bits.
        assert [x for _, x in got[source]] == pytest.approx([x for _, x in want[source]], abs=1e-5)


@pytest.fixture(scope="module")
def pristine(request, backend, tmp_path_factory, embedder):
    """Two topics of real posts (sqlite, python: 58 posts) ingested once, kept as a template."""
    root = tmp_path_factory.mktemp("related")
    posts = copy_posts(root / "posts", ["sqlite", "python"])
    shutil.copytree(posts, root / "pristine")
    target = make_database(request, backend, root, "blog")
    conn = open_storage(target, create=True)
    first = Ingester(conn, embedder).run([open_source(str(posts), base_url=BASE)])
    if conn.kind == "sqlite":
        conn.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the whole database in the file
    conn.close()
    return root, target, first


@pytest.fixture
def blog(request, pristine, embedder, tmp_path):
    """The pristine posts and database, restored for each test: (posts, conn, ingest, first run).

    The posts stay at the path they were first ingested from (a folder's posts are
    pruned by that path).
    """
    root, template, first = pristine
    posts = root / "posts"
    shutil.rmtree(posts)
    shutil.copytree(root / "pristine", posts)
    conn = open_storage(clone_database(request, template, tmp_path, "blog"))

    def ingest():
        return Ingester(conn, embedder).run([open_source(str(posts), base_url=BASE)])

    yield posts, conn, ingest, first
    conn.close()


def test_every_post_gets_its_ten_nearest_posts(blog):
    _, conn, _, first = blog
    lists = lists_by_source(conn)
    assert first.related == len(lists) == first.added == 58
    for source, ranked in lists.items():
        names = [s for s, _ in ranked]
        scores = [x for _, x in ranked]
        assert len(names) == len(set(names)) == 10 and source not in names
        assert scores == sorted(scores, reverse=True) and -1 <= scores[-1] <= scores[0] <= 1
    # The two halves of the same story are each other's nearest posts.
    assert lists["sqlite/compile-sqlite3-ubuntu.md"][0][0] in {
        "sqlite/sqlite-version-macos-python.md", "sqlite/ld-preload.md",
        "sqlite/compile-sqlite3-rsync.md"}


def test_an_edit_recomputes_only_the_lists_it_can_change(blog):
    posts, conn, ingest, _ = blog
    edited = posts / "sqlite" / "enabling-wal-mode.md"
    before = lists_by_source(conn)
    # The WAL post now tells the story of a uv post: it should move to the Python neighbourhood.
    edited.write_text((CORPUS / "uv" / "uv-cli-apps.md").read_text())
    second = ingest()
    assert second.updated == 1 and second.embedded > 0
    assert 0 < second.related < 58, "an edit to one post rewrote every list"
    after = lists_by_source(conn)
    assert after["sqlite/enabling-wal-mode.md"] != before["sqlite/enabling-wal-mode.md"]
    assert ingest().related == 0  # nothing changed, nothing recomputed
    assert_same_lists(after, recomputed_from_scratch(conn))


def test_a_deleted_post_leaves_every_list(blog):
    posts, conn, ingest, _ = blog
    gone = "sqlite/ld-preload.md"
    assert any(gone in [s for s, _ in ranked] for ranked in lists_by_source(conn).values())
    (posts / gone).unlink()
    run = ingest()
    assert run.deleted == 1 and 0 < run.related < 57
    after = lists_by_source(conn)
    assert gone not in after
    assert not any(gone in [s for s, _ in ranked] for ranked in after.values())
    assert all(len(ranked) == 10 for ranked in after.values())
    assert_same_lists(after, recomputed_from_scratch(conn))


def test_reindex_fills_in_lists_a_database_lacks(blog):
    """A database from before related posts (no lists) gets them from `ragserver reindex`."""
    _, conn, _, _ = blog
    with conn.transaction():
        conn.conn.execute("DELETE FROM post_vectors")
        conn.conn.execute("DELETE FROM related_posts")
    target = conn.url if conn.kind == "postgresql" else conn.path
    result = ragserver("reindex", "--db", target, "--quiet", check=True)
    assert "related lists updated: 58;" in result.stdout
    assert len(lists_by_source(conn)) == 58


def test_cli_lists_related_posts_by_source_or_url(seeded_db):
    result = ragserver("related", "sqlite/enabling-wal-mode.md", "--db", seeded_db, "--json",
                       "-n", "3", check=True)
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert all(r["source"] != "sqlite/enabling-wal-mode.md" for r in rows)
    by_url = ragserver("related", f"{BASE}sqlite/enabling-wal-mode/", "--db", seeded_db, "-n", "3",
                       check=True)
    assert rows[0]["title"] in by_url.stdout and by_url.stdout.startswith("1. [")
    missing = ragserver("related", "sqlite/no-such-post.md", "--db", seeded_db)
    assert missing.returncode == 1 and "no post with source 'sqlite/no-such-post.md'" in missing.stderr


def test_api_related_json(client, seeded_conn):
    body = client.get("/api/related?source=sqlite/enabling-wal-mode.md&n=4").json
    assert body["source"] == "sqlite/enabling-wal-mode.md"
    assert body["url"] == f"{BASE}sqlite/enabling-wal-mode"
    post = seeded_conn.get_post("sqlite/enabling-wal-mode.md")
    want = seeded_conn.related_for(post.id, 4)
    assert [r["source"] for r in body["related"]] == [r.source for r in want]
    assert {"source", "title", "url", "date", "score"} == set(body["related"][0])
    by_url = client.get(f"/api/related?url={BASE}sqlite/enabling-wal-mode%23heading&n=4",
                        headers={"Origin": "https://blog.example"})
    assert by_url.json == body
    assert by_url.headers["Access-Control-Allow-Origin"] == "https://blog.example"


@pytest.mark.parametrize("query,status,message", [
    ("", 400, "?source="), ("source=nope.md", 404, "no post with source 'nope.md'"),
    ("url=https://elsewhere.example/post", 404, "no post at"),
    ("source=sqlite/enabling-wal-mode.md&n=11", 400, "between 1 and 10"),
])
def test_api_related_bad_requests(client, query, status, message):
    response = client.get(f"/api/related?{query}")
    assert response.status_code == status and message in response.json["error"]


def test_related_fragment_is_inert_html(tmp_path, embedder):
    """Titles are escaped and only http(s) links become links, whatever the posts say."""
    hostile = [
        {"id": "a", "title": "<script>alert(1)</script> WAL", "url": "javascript:alert(1)",
         "content": (CORPUS / "sqlite" / "enabling-wal-mode.md").read_text()},
        {"id": "b", "title": "Journal modes", "url": f"{BASE}b", "date": "2024-03-01",
         "content": (CORPUS / "sqlite" / "vacum-disk-full.md").read_text()},
    ]
    db = tmp_path / "hostile.db"
    ragserver("ingest", "-", "--db", db, "--quiet", check=True,
              input="\n".join(json.dumps(h) for h in hostile))
    client = create_app({"db": str(db)}, embedder=embedder).test_client()
    fragment = client.get("/related?source=b").get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt; WAL" in fragment
    assert "<script>" not in fragment and "javascript:" not in fragment
    # The only link is to the post's topic on this server's map.
    assert re.findall(r'<a href="([^"]*)"', fragment) == ["http://localhost/explore?topic=1"]
    other = client.get("/related?source=a").get_data(as_text=True)
    assert f'<a href="{BASE}b">Journal modes</a> <time datetime="2024-03-01">2024-03-01</time>' in other
    missing = client.get("/related?source=zzz")
    assert missing.status_code == 404 and "no post with source" in missing.get_data(as_text=True)
