"""/explore and /api/explore over the seeded posts, and the map's place in related posts."""

from __future__ import annotations

import gc
import gzip
import html
import re
from types import SimpleNamespace

import pytest

from conftest import clone_database
from ragserver import create_app
from ragserver.explore import draw
from ragserver.storage import open_storage
from ragserver.web.explore import BINS, EXTREMES, MATCHES
from ragserver.web.policy import content_security_policy

pytestmark = pytest.mark.app({"allowed_origins": "https://blog.example"})

WAL = "Enabling WAL mode for SQLite database files"  # sqlite/enabling-wal-mode.md
UV = "Using uv to develop Python command-line applications"  # uv/uv-cli-apps.md
POINT = re.compile(r'<a href="([^"]*)" class="point( match)?" data-id="(\d+)" '
                   r'data-source="([^"]*)" data-topic="(\d+)"><circle [^>]*fill="([^"]+)">')


def points(page: str) -> list[dict]:
    """The map's points as the page draws them."""
    return [{"url": html.unescape(url), "match": bool(match), "id": int(pid),
             "source": html.unescape(source), "topic": int(topic), "fill": fill}
            for url, match, pid, source, topic, fill in POINT.findall(page)]


def map_classes(page: str) -> str:
    return re.search(r'<svg [^>]*class="([^"]*ragserver-map[^"]*)"', page).group(1)


def lit(page: str) -> set[str]:
    return {p["source"] for p in points(page) if p["match"]}


def topics_listed(page: str) -> dict[int, tuple[str, int]]:
    """topic id -> (label, post count) from the page's list of topics."""
    found = re.findall(r'<li class="topic[^"]*" id="topic-(\d+)">.*?data-show-topic="\d+">'
                       r'([^<]*)</a>\s*<span class="count">(\d+) posts?</span>', page, re.S)
    return {int(i): (html.unescape(label), int(count)) for i, label, count in found}


@pytest.fixture(scope="module", autouse=True)
def copies(request, seeded_db, tmp_path_factory):
    """Copies of the seeded database for tests that need another: `unmapped`, its posts
    without their map (a file from before topics, without the tables, for SQLite; emptied
    tables for PostgreSQL, whose migrations make them), and `changing`, for a test to
    change. Made before this module's apps connect: PostgreSQL copies a database only
    while nobody else is connected to it."""
    gc.collect()  # apps of earlier tests let go of their connections
    folder = tmp_path_factory.mktemp("copies")
    unmapped = clone_database(request, str(seeded_db), folder, "unmapped")
    changing = clone_database(request, str(seeded_db), folder, "changing")
    conn = open_storage(unmapped)
    with conn.transaction():
        if conn.kind == "sqlite":
            conn.conn.execute("DROP TABLE post_map")
            conn.conn.execute("DROP TABLE topics")
        else:
            conn.conn.execute("DELETE FROM post_map")
            conn.conn.execute("DELETE FROM topics")
        conn.conn.execute("DELETE FROM meta WHERE key = 'map_state'")
    conn.close()
    return SimpleNamespace(unmapped=unmapped, changing=changing)


@pytest.fixture
def shape(seeded_conn):
    """(posts by source, map points by source, topics) as stored."""
    posts = {p.source: p for p in seeded_conn.list_posts()}
    return posts, {p.source: p for p in seeded_conn.map_points()}, seeded_conn.topics()


# -- the page -----------------------------------------------------------------

def test_page_lists_every_topic_and_draws_every_post(client, shape):
    posts, placed, topics = shape
    page = client.get("/explore").get_data(as_text=True)
    listed = topics_listed(page)
    assert len(topics) >= 2 and set(listed) == {t.id for t in topics}
    assert {i: label for i, (label, _) in listed.items()} == {t.id: t.label for t in topics}
    assert sum(count for _, count in listed.values()) == len(posts)
    drawn = points(page)
    assert len(drawn) == len(posts) == len(placed)
    assert {p["source"] for p in drawn} == set(posts)
    for point in drawn:
        assert point["url"] == posts[point["source"]].url
        assert point["topic"] == placed[point["source"]].topic
        assert point["fill"] == draw.colour(point["topic"]) and not point["match"]
    assert "filtering" not in map_classes(page)
    # Each topic names its most central posts, and links to its points lit up.
    first = topics[0]
    central = sorted((p for p in placed.values() if p.topic == first.id),
                     key=lambda p: (-p.centrality, p.post_id))[:3]
    item = next(i for i in page.split('<li class="topic') if i.startswith(f'" id="topic-{first.id}"'))
    for point in central:
        assert f'<a href="{point.url}">{html.escape(point.title)}</a>' in item
    assert f'href="/explore?topic={first.id}"' in item


def test_search_lights_up_what_the_search_finds(client):
    page = client.get("/explore?q=enable+WAL+mode").get_data(as_text=True)
    found = [r["source"] for r in
             client.get(f"/api/search?q=enable+WAL+mode&n={MATCHES}").json["results"]]
    assert "filtering" in map_classes(page)
    assert lit(page) == set(found) and "sqlite/enabling-wal-mode.md" in lit(page)
    assert len(points(page)) > len(found)  # the rest are drawn, faded
    assert f"{len(found)} posts match “enable WAL mode”." in page
    assert 'value="enable WAL mode"' in page


def test_topic_lights_up_exactly_its_posts(client, shape):
    _, placed, topics = shape
    chosen = topics[1]
    page = client.get(f"/explore?topic={chosen.id}").get_data(as_text=True)
    members = {s for s, p in placed.items() if p.topic == chosen.id}
    assert "filtering" in map_classes(page)
    assert lit(page) == members and len(points(page)) > len(members)
    assert f"“{html.escape(chosen.label)}” lit up: {len(members)} posts." in page
    assert f'<li class="topic chosen" id="topic-{chosen.id}">' in page


@pytest.mark.parametrize("query,message", [
    ("topic=99", "topic must be between 1 and"), ("topic=first", "topic must be a whole number"),
    ("q=" + "x" * 2001, "2,000"), ("q=a%01b", "control characters"),
])
def test_bad_parameters_are_a_400_page_with_the_reason(client, query, message):
    response = client.get(f"/explore?{query}")
    page = response.get_data(as_text=True)
    assert response.status_code == 400 and message in page and 'role="alert"' in page
    assert '<form id="explore"' in page and len(points(page)) > 0  # the map, unmarked
    assert "filtering" not in map_classes(page)


# -- an axis ----------------------------------------------------------------------

def extremes(page: str) -> list[list[tuple[str, float]]]:
    """The two lists of posts at the ends of an axis: [(title, score)]."""
    lists = re.findall(r"<h3>Most like “[^”]*”</h3>\s*<ol>(.*?)</ol>", page, re.S)
    return [[(html.unescape(title), float(score)) for title, score in
             re.findall(r'<a href="[^"]*">([^<]*)</a> <span class="score">([-+]\d\.\d+)</span>', ol)]
            for ol in lists]


def test_an_axis_puts_a_post_whose_title_is_a_pole_at_that_end(client, shape):
    posts, _, _ = shape
    page = client.get(f"/explore?axis={WAL},{UV}").get_data(as_text=True)
    assert f"From “{WAL}” to “{UV}”" in page
    first, second = extremes(page)
    assert len(first) == len(second) == EXTREMES
    assert first[0][0] == WAL and second[0][0] == UV
    assert [s for _, s in first] == sorted(s for _, s in first)
    assert [s for _, s in second] == sorted((s for _, s in second), reverse=True)
    assert first[0][1] < 0 < second[0][1]
    # Points are coloured along the axis: each pole's post on its own side of grey.
    fills = {p["source"]: p["fill"] for p in points(page)}
    assert len(fills) == len(posts) and set(fills.values()) <= set(draw.AXIS_COLOURS)
    middle = len(draw.AXIS_COLOURS) // 2
    assert draw.AXIS_COLOURS.index(fills["sqlite/enabling-wal-mode.md"]) < middle
    assert draw.AXIS_COLOURS.index(fills["uv/uv-cli-apps.md"]) > middle
    bars = re.findall(r"<title>(\d+) posts? from ([-+]\d\.\d+) to ([-+]\d\.\d+)</title></rect>", page)
    assert len(bars) == BINS and sum(int(n) for n, _, _ in bars) == len(posts)
    assert float(bars[0][1]) == pytest.approx(first[0][1], abs=1e-3)
    assert float(bars[-1][2]) == pytest.approx(second[0][1], abs=1e-3)
    assert 'id="topics"' not in page  # topic colours are not on this map


@pytest.mark.parametrize("axis", ["just one idea", "a,b,c", " ,b", "a,", ",", "x" * 2001 + ",b"])
def test_an_axis_is_two_ideas_and_one_comma(client, axis):
    response = client.get("/explore", query_string={"axis": axis})
    page = response.get_data(as_text=True)
    assert response.status_code == 400 and 'role="alert"' in page and '<form id="explore"' in page
    message = "2,000" if len(axis) > 2000 else "An axis is two ideas separated by one comma"
    assert message in page
    assert f'name="axis" type="text" value="{html.escape(axis)}"' in page  # kept to correct
    api = client.get("/api/explore", query_string={"axis": axis})
    assert api.status_code == 400 and message in api.json["error"]


# -- /api/explore -------------------------------------------------------------------

def test_api_gives_every_post_and_topic(client, shape):
    posts, placed, topics = shape
    response = client.get("/api/explore", headers={"Origin": "https://blog.example"})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "https://blog.example"
    body = response.json
    assert set(body) == {"posts", "topics", "built_at", "labels"}
    assert body["built_at"] and body["labels"] == "keywords"
    assert {p["source"] for p in body["posts"]} == set(posts) and len(body["posts"]) == len(posts)
    first = body["posts"][0]
    assert set(first) == {"source", "title", "url", "date", "topic", "x", "y"}
    assert first["topic"] == placed[first["source"]].topic and 0 <= first["x"] <= 1
    assert [t["id"] for t in body["topics"]] == [t.id for t in topics]
    assert sum(t["size"] for t in body["topics"]) == len(posts)
    assert {"id", "label", "label_source", "keywords", "size", "x", "y", "central"} == \
        set(body["topics"][0])
    assert client.options("/api/explore").status_code == 204


def test_api_with_a_search_and_an_axis(client, shape):
    posts, _, _ = shape
    body = client.get(f"/api/explore?q=enable+WAL+mode&axis={WAL},{UV}").json
    found = [r["source"] for r in
             client.get(f"/api/search?q=enable+WAL+mode&n={MATCHES}").json["results"]]
    assert body["matches"] == found
    axis = body["axis"]
    assert axis["from"] == WAL and axis["to"] == UV
    assert axis["low"][0]["source"] == "sqlite/enabling-wal-mode.md"
    assert axis["high"][0]["source"] == "uv/uv-cli-apps.md"
    assert len(axis["low"]) == len(axis["high"]) == EXTREMES
    scores = {p["source"]: p["axis"] for p in body["posts"]}
    assert len(scores) == len(posts) and min(scores.values()) == axis["low"][0]["axis"]
    assert max(scores.values()) == axis["high"][0]["axis"] == axis["histogram"]["max"]
    assert len(axis["histogram"]["counts"]) == BINS
    assert sum(axis["histogram"]["counts"]) == len(posts)


@pytest.mark.parametrize("query,message", [
    ("q=" + "x" * 2001, "2,000"), ("axis=one", "two ideas"), ("q=a%00", "control characters"),
])
def test_api_bad_parameters_are_400_json(client, query, message):
    response = client.get(f"/api/explore?{query}")
    assert response.status_code == 400 and message in response.json["error"]


@pytest.mark.app({"search_rate": 2})
def test_the_api_and_searches_on_the_page_are_rate_limited(client):
    assert client.get("/api/explore").status_code == 200
    assert client.get("/explore?q=wal").status_code == 200
    assert client.get("/explore").status_code == 200  # the map alone is not counted
    limited = client.get("/api/explore")
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert limited.json["error"].startswith("Too many requests from your address")
    page = client.get("/explore?axis=a,b")
    assert page.status_code == 429 and "Too many searches" in page.get_data(as_text=True)


def test_big_answers_are_gzipped_for_clients_that_take_it(client):
    for path in ("/explore", "/explore?topic=1", "/api/explore"):
        plain = client.get(path)
        packed = client.get(path, headers={"Accept-Encoding": "gzip, deflate"})
        assert "Content-Encoding" not in plain.headers
        assert packed.headers["Content-Encoding"] == "gzip"
        assert "Accept-Encoding" in packed.headers["Vary"]
        assert gzip.decompress(packed.data) == plain.data
        assert len(packed.data) * 3 < len(plain.data)


def test_the_page_without_marks_is_one_page_for_everyone(client):
    """Made once per map and kept: what one request sent does not reach another's page."""
    first = client.get("/explore?q=%20%20&axis=%20&topic=").get_data(as_text=True)
    assert 'name="q" type="search" value=""' in first
    assert client.get("/explore").get_data(as_text=True) == first


# -- no posts, no map -----------------------------------------------------------------

def test_posts_without_a_map_say_how_to_make_one(copies, embedder):
    client = create_app({"db": copies.unmapped}, embedder=embedder).test_client()
    page = client.get("/explore")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "No map yet: topics are computed at the end of an ingest" in text
    assert "ragserver topics" in text and "<svg" not in text
    api = client.get("/api/explore")
    assert api.status_code == 503 and api.json["error"].startswith("no map yet")


def test_an_empty_database_says_there_are_no_posts(new_database, embedder):
    client = create_app({"db": new_database}, embedder=embedder).test_client()
    page = client.get("/explore")
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and "No posts have been ingested yet" in text
    assert "<svg" not in text and '<form id="explore"' in text
    api = client.get("/api/explore")
    assert api.status_code == 503 and api.json == {"error": "no posts have been ingested yet"}


def test_the_drawn_map_follows_the_database(copies, embedder):
    """The map is drawn once per version of the database: a deleted post leaves it."""
    target = copies.changing
    client = create_app({"db": target}, embedder=embedder).test_client()
    before = {p["source"] for p in points(client.get("/explore").get_data(as_text=True))}
    assert before == {p["source"] for p in client.get("/api/explore").json["posts"]}
    conn = open_storage(target)
    with conn.transaction():
        conn.delete_post(conn.get_post("sqlite/enabling-wal-mode.md").id)
    conn.close()
    after = {p["source"] for p in points(client.get("/explore").get_data(as_text=True))}
    assert after == before - {"sqlite/enabling-wal-mode.md"}
    assert {p["source"] for p in client.get("/api/explore").json["posts"]} == after


# -- the page's safety ----------------------------------------------------------------

@pytest.mark.parametrize("query", ["", "?q=wal", f"?axis={WAL},{UV}", "?topic=1", "?topic=x"])
def test_no_inline_script_or_style_and_the_same_policy(client, query):
    response = client.get(f"/explore{query}")
    page = response.get_data(as_text=True)
    assert response.headers["Content-Security-Policy"] == \
        content_security_policy(("https://blog.example",))
    assert response.headers["Content-Security-Policy"] == \
        client.get("/search").headers["Content-Security-Policy"]
    scripts = re.findall(r"<script\b[^>]*>", page)
    assert scripts and all(" src=" in tag for tag in scripts)
    assert '<script src="/static/explore.js" defer></script>' in page
    assert " style=" not in page and "<style" not in page
    assert not re.search(r"<[^>]*\son[a-z]+=", page)  # no onclick= and the like


def test_a_search_is_escaped_everywhere(client):
    page = client.get("/explore?q=%3Cscript%3Ealert(1)%3C/script%3E+wal").get_data(as_text=True)
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; wal" in page


def test_search_and_chat_pages_link_to_the_map(client):
    for path in ("/search", "/"):
        assert '<a href="/explore">Explore the map</a>' in client.get(path).get_data(as_text=True)


# -- related posts: topic and nearby ------------------------------------------------------

def test_related_posts_name_the_topic_and_nearby_posts(client, seeded_conn):
    body = client.get("/api/related?source=sqlite/enabling-wal-mode.md&n=3").json
    post = seeded_conn.get_post("sqlite/enabling-wal-mode.md")
    point = seeded_conn.map_point(post.id)
    topic = next(t for t in seeded_conn.topics() if t.id == point.topic)
    assert body["topic"] == {"id": topic.id, "label": topic.label,
                             "url": f"/explore?topic={topic.id}"}
    related = [r["source"] for r in body["related"]]
    near = [p.source for p in seeded_conn.map_near(point, 10) if p.source not in related][:3]
    assert [n["source"] for n in body["nearby"]] == near and len(near) == 3
    assert post.source not in near
    assert all(set(n) == set(body["related"][0]) for n in body["nearby"])
    assert all(-1 <= n["score"] <= 1 for n in body["nearby"])

    fragment = client.get("/related?source=sqlite/enabling-wal-mode.md&n=3").get_data(as_text=True)
    nearby = fragment[fragment.index('<ul class="ragserver-nearby-posts">'):]
    for item in body["nearby"]:
        assert f'<a href="{item["url"]}">{html.escape(item["title"])}</a>' in nearby
    # Absolute: a blog includes the fragment in its own pages.
    assert (f'Topic: <a href="http://localhost/explore?topic={topic.id}">'
            f'{html.escape(topic.label)}</a>') in fragment


def test_related_posts_of_a_database_without_a_map(copies, embedder):
    client = create_app({"db": copies.unmapped}, embedder=embedder).test_client()
    body = client.get("/api/related?source=sqlite/enabling-wal-mode.md&n=3").json
    assert len(body["related"]) == 3 and body["topic"] is None and body["nearby"] == []
    fragment = client.get("/related?source=sqlite/enabling-wal-mode.md&n=3").get_data(as_text=True)
    assert "Related posts" in fragment and "Nearby" not in fragment and "Topic" not in fragment
