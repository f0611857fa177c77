"""/api/search: grouped results, safe highlights, CORS allow-list, cached query vectors."""

from __future__ import annotations

import threading

import pytest

from ragserver import create_app
from ragserver.render import highlight
from ragserver.web.pool import READERS


pytestmark = pytest.mark.app({"allowed_origins": "https://blog.example, https://b.example/"})


@pytest.mark.parametrize("mode", ["hybrid", "vector", "keyword"])
def test_results_are_one_per_post_with_highlighted_snippets(client, mode):
    response = client.get(f"/api/search?q=enable+WAL+mode&n=5&mode={mode}")
    assert response.status_code == 200
    body = response.json
    assert body["query"] == "enable WAL mode" and body["mode"] == mode and body["took_ms"] > 0
    sources = [r["source"] for r in body["results"]]
    assert sources[0] == "sqlite/enabling-wal-mode.md"
    assert len(sources) == len(set(sources)) <= 5
    first = body["results"][0]
    assert {"source", "title", "url", "anchor", "date", "snippet", "score"} <= set(first)
    if mode != "vector":  # a vector hit need not contain the words themselves
        assert "<mark>" in first["snippet"]


@pytest.mark.parametrize("query,message", [
    ("q=", "type a search"), ("q=%20%20", "type a search"), ("q=" + "x" * 2001, "2,000"),
    ("q=wal&n=0", "between 1 and 50"), ("q=wal&n=x", "whole number"),
    ("q=wal&mode=fuzzy", "mode must be one of"),
])
def test_bad_parameters_are_400_with_a_message(client, query, message):
    response = client.get(f"/api/search?{query}")
    assert response.status_code == 400 and message in response.json["error"]


def test_cors_only_for_allowed_origins(client):
    allowed = client.get("/api/search?q=wal", headers={"Origin": "https://blog.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://blog.example"
    trailing = client.get("/api/search?q=wal", headers={"Origin": "https://b.example"})
    assert trailing.headers["Access-Control-Allow-Origin"] == "https://b.example"
    other = client.get("/api/search?q=wal", headers={"Origin": "https://evil.example"})
    assert other.status_code == 200 and "Access-Control-Allow-Origin" not in other.headers
    preflight = client.options("/api/search", headers={"Origin": "https://blog.example"})
    assert preflight.status_code == 204 and preflight.headers["Access-Control-Allow-Origin"]
    assert "Origin" in allowed.headers["Vary"]


def test_repeated_query_is_embedded_once(client):
    embedder = client.application.extensions["ragserver"].embedder()
    client.get("/api/search?q=recursive+common+table+expressions")
    before = embedder.cache_info()
    client.get("/api/search?q=recursive+common+table+expressions")
    after = embedder.cache_info()
    assert after.hits == before.hits + 1 and after.misses == before.misses


def test_highlight_escapes_post_content():
    html = str(highlight('<img src=x onerror=alert(1)> WAL <script>x</script> "wal"', "wal img"))
    assert "<img" not in html and "<script" not in html
    assert html.count("<mark>") == 3 and "&lt;<mark>img</mark>" in html


def test_more_passages_per_post_on_request(client):
    results = client.get("/api/search?q=WAL+mode&n=3&more=2").json["results"]
    assert "more" not in client.get("/api/search?q=WAL+mode&n=3").json["results"][0]
    first = results[0]
    assert first["source"] == "sqlite/enabling-wal-mode.md" and 1 <= len(first["more"]) <= 2
    for result in results:
        assert all(m["score"] <= result["score"] for m in result["more"])
        assert all({"anchor", "headings", "snippet", "score"} == set(m) for m in result["more"])
    assert client.get("/api/search?q=wal&more=6").status_code == 400


def test_concurrent_searches_share_a_few_read_connections(seeded_db, embedder):
    """Eight threads searching at once use at most READERS connections (each sqlite-vss
    connection holds its own copy of the index), and every search succeeds."""
    app = create_app({"db": str(seeded_db), "search_rate": 0}, embedder=embedder)
    statuses = []

    def searcher(word):
        client = app.test_client()
        for _ in range(5):
            statuses.append(client.get(f"/api/search?q={word}").status_code)

    threads = [threading.Thread(target=searcher, args=(w,)) for w in
               ("wal", "uv", "python", "sqlite", "json", "vacuum", "fts5", "pytest")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 40
    services = app.extensions["ragserver"]
    assert 1 <= services.pool._idle.qsize() <= READERS
