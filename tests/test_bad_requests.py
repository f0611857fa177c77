"""Bad HTTP input gets a 4xx with a clear message (JSON under /api/, HTML elsewhere), and
nothing a web request does changes the database."""

from __future__ import annotations

import hashlib
import json

import pytest

from conftest import clone_database, rows
from ragserver import create_app

LONG = "x" * 2001

pytestmark = pytest.mark.app({"search_rate": 0, "ask_rate": 0, "max_answer_tokens": 16}, llm=True)


def _json(body: bytes) -> dict:
    return json.loads(body)


# (method, path, request kwargs, status, words the message must contain)
API_CASES = [
    ("GET", "/api/search", {}, 400, "Please type a search"),
    ("GET", "/api/search?q=%20%20%09", {}, 400, "Please type a search"),
    ("GET", f"/api/search?q={LONG}", {}, 400, "limited to 2,000 characters"),
    ("GET", "/api/search", {"environ_overrides": {"QUERY_STRING": "q=%FF%FE"}}, 400, "not valid UTF-8"),
    ("GET", "/api/search?q=a%00b", {}, 400, "control characters"),
    ("GET", "/api/search?q=wal&n=0", {}, 400, "n must be between 1 and 50"),
    ("GET", "/api/search?q=wal&n=ten", {}, 400, "n must be a whole number"),
    ("GET", "/api/search?q=wal&mode=fuzzy", {}, 400, "mode must be one of"),
    ("GET", "/api/search?q=wal&more=9", {}, 400, "more must be between 0 and 5"),
    ("GET", "/api/related", {}, 400, "give the post"),
    ("GET", "/api/related?source=nope.md", {}, 404, "nope.md"),
    ("GET", "/api/related?source=sqlite/enabling-wal-mode.md&n=99", {}, 400, "n must be between"),
    ("POST", "/api/ask", {"data": "question=hi", "content_type": "text/plain"}, 400, "send a JSON object"),
    ("POST", "/api/ask", {"data": b"\xff\xfe{", "content_type": "application/json"}, 400, "send a JSON object"),
    ("POST", "/api/ask", {"json": ["a list"]}, 400, "send a JSON object"),
    ("POST", "/api/ask", {"json": {"question": "  "}}, 400, "Please type a question"),
    ("POST", "/api/ask", {"json": {"question": 42}}, 400, "Please type a question"),
    ("POST", "/api/ask", {"json": {"question": LONG}}, 400, "limited to 2,000 characters"),
    ("POST", "/api/ask", {"json": {"question": "hi", "history": "not a list"}}, 400, "history must be a list"),
    ("POST", "/api/ask", {"data": b"{" + b" " * 70_000 + b"}", "content_type": "application/json"},
     413, "too large"),
    ("GET", "/api/ask", {}, 405, "GET is not allowed"),
    ("DELETE", "/api/search", {}, 405, "DELETE is not allowed"),
    ("GET", "/api/nothing-here", {}, 404, "nothing at /api/nothing-here"),
]


@pytest.mark.parametrize("method, path, kwargs, status, words", API_CASES,
                         ids=[f"{c[0]} {c[1][:40]} {c[4]}" for c in API_CASES])
def test_api_refuses_bad_input_with_a_json_message(client, method, path, kwargs, status, words):
    response = client.open(path, method=method, **kwargs)
    assert response.status_code == status
    assert response.mimetype == "application/json"
    assert words in _json(response.data)["error"]


PAGE_CASES = [
    ("GET", f"/search?q={LONG}", {}, 400, "limited to 2,000 characters"),
    ("GET", "/search?q=wal&page=11", {}, 400, "page must be between 1 and 10"),
    ("GET", "/search", {"environ_overrides": {"QUERY_STRING": "q=%C3%28"}}, 400, "not valid UTF-8"),
    ("POST", "/chat", {"data": {"question": "   "}}, 400, "Please type a question"),
    ("POST", "/chat", {"data": {"question": LONG}}, 400, "limited to 2,000 characters"),
    ("POST", "/chat", {"data": b"question=%FF", "content_type": "application/x-www-form-urlencoded"},
     400, "not valid UTF-8"),
    ("POST", "/chat", {"data": {"question": "x" * 70_000}}, 413, "too large"),
    ("GET", "/chat/stream/no-such-turn", {}, 404, "nothing at"),
    ("POST", "/chat/stop/no-such-turn", {}, 404, "nothing at"),
    ("GET", "/no-such-page", {}, 404, "nothing at /no-such-page"),
    ("PUT", "/search", {}, 405, "PUT is not allowed"),
]


@pytest.mark.parametrize("method, path, kwargs, status, words", PAGE_CASES,
                         ids=[f"{c[0]} {c[1][:40]} {c[4]}" for c in PAGE_CASES])
def test_pages_refuse_bad_input_with_an_html_message(client, method, path, kwargs, status, words):
    response = client.open(path, method=method, **kwargs)
    assert response.status_code == status
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert words in html and "Traceback" not in html and "<title>" in html  # a whole page
    fragment = client.open(path, method=method, headers={"HX-Request": "true"}, **kwargs)
    assert fragment.status_code == status and "<html" not in fragment.get_data(as_text=True)


def test_no_web_request_changes_the_database(request, seeded_db, embedder, chat_model, tmp_path):
    """Every route that is not a plain read writes only to memory or the activity store
    (conversations, feedback, the admin's sign-in); the posts database is opened
    read-only. (PostgreSQL also keeps the shared rate limit buckets and the activity in
    tables of their own.)"""
    db = clone_database(request, str(seeded_db), tmp_path, "copy")
    before = _contents(db)
    app = create_app({"db": str(db), "max_answer_tokens": 16}, embedder=embedder, llm=chat_model)
    writes = {(rule.rule, method) for rule in app.url_map.iter_rules()
              for method in rule.methods - {"GET", "HEAD", "OPTIONS"}}
    assert writes == {("/chat", "POST"), ("/chat/stop/<turn_id>", "POST"), ("/api/ask", "POST"),
                      ("/a/<turn_id>/feedback", "POST"), ("/api/feedback", "POST"),
                      ("/admin", "POST"), ("/admin/sign-out", "POST"), ("/mcp", "POST"),
                      ("/v1/chat/completions", "POST")}
    client = app.test_client()
    for path in ("/", "/search?q=wal", "/api/search?q=wal&more=2", "/healthz",
                 "/api/related?source=sqlite/enabling-wal-mode.md", "/related?source=uv/uv-run.md"):
        assert client.get(path).status_code in (200, 404)
    assert b"event: done" in client.post("/api/ask", json={"question": "What is WAL mode?"}).data
    asked = client.post("/chat", data={"question": "What is WAL mode?"})
    assert asked.status_code == 303
    turn_id = asked.headers["Location"].rsplit("#turn-", 1)[1]
    assert client.post(f"/a/{turn_id}/feedback", data={"vote": "up"}).status_code == 303
    assert app.extensions["ragserver"].activity.votes(turn_id) == {"up": 1, "down": 0}
    for name, arguments in [("search_posts", {"query": "wal"}), ("ask", {"question": "What is WAL?"}),
                            ("get_post", {"url": "https://til.example/sqlite/enabling-wal-mode"}),
                            ("related_posts", {"url": "https://til.example/uv/uv-cli-apps"})]:
        called = client.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                           "params": {"name": name, "arguments": arguments}},
                             headers={"Accept": "application/json, text/event-stream",
                                      "MCP-Protocol-Version": "2025-11-25"})
        assert called.status_code == 200 and called.json["result"]["isError"] is False, called.json
    completion = client.post("/v1/chat/completions", json={
        "model": "ragserver", "messages": [{"role": "user", "content": "What is WAL mode?"}]})
    assert completion.status_code == 200 and completion.json["answered"]
    with app.extensions["ragserver"].reading() as conn:
        with pytest.raises(Exception, match="readonly|read-only"):
            conn.conn.execute("DELETE FROM posts")
    assert _contents(db) == before


def _contents(db: str):
    """The file's hash (SQLite), or every row of the posts' tables (PostgreSQL)."""
    if not db.startswith("postgresql://"):
        return hashlib.sha256(open(db, "rb").read()).hexdigest()
    from ragserver.storage import open_storage

    storage = open_storage(db, readonly=True)
    try:
        return [rows(storage, sql) for sql in (
            "SELECT key, value FROM meta ORDER BY key",
            "SELECT id, source, title, content_hash FROM posts ORDER BY id",
            "SELECT id, post_id, content_hash, embedding::text FROM passages ORDER BY id",
            "SELECT post_id, content_hash FROM post_vectors ORDER BY post_id",
            "SELECT post_id, rank, related_id FROM related_posts ORDER BY 1, 2")]
    finally:
        storage.close()


def test_an_unexpected_error_is_a_500_with_a_message_and_logged(seeded_db, caplog):
    app = create_app({"db": str(seeded_db)})
    app.add_url_rule("/api/broken", "api_broken", lambda: 1 / 0)
    app.add_url_rule("/broken", "broken", lambda: 1 / 0)
    client = app.test_client()
    api = client.get("/api/broken")
    assert api.status_code == 500 and "has been logged" in api.get_json()["error"]
    page = client.get("/broken")
    assert page.status_code == 500 and b"has been logged" in page.data
    assert b"ZeroDivisionError" not in page.data and b"Traceback" not in page.data
    assert "ZeroDivisionError" in caplog.text
