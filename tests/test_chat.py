"""The chat page, its SSE stream and /api/ask, with the real models and a real database."""

from __future__ import annotations

import html
import http.client
import json
import re
import socket
import threading
import time

import pytest
from werkzeug.serving import make_server

from ragserver import create_app
from ragserver.storage import ExamplePost, NewPost, open_storage
from ragserver.render import render_markdown
from ragserver.web.chat import example_question

WAL_QUESTION = "How do I enable WAL mode for a SQLite database?"

pytestmark = pytest.mark.app({"max_answer_tokens": 40}, llm=True)


def parse_sse(body: str) -> list[tuple[str, str]]:
    """(event, data) pairs of a text/event-stream body."""
    events = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        name = "message"
        data = []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        events.append((name, "\n".join(data)))
    return events


def test_api_ask_streams_sources_tokens_done(client):
    response = client.post("/api/ask", json={"question": WAL_QUESTION, "history": []})
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    events = parse_sse(response.get_data(as_text=True))
    kinds = [name for name, _ in events]
    assert kinds[:2] == ["sources", "quick"] and kinds[-2:] == ["checked", "done"]
    assert set(kinds[2:-2]) == {"token"}
    sources = json.loads(events[0][1])["sources"]
    assert {"source", "title", "url", "anchor", "text", "score"} <= set(sources[0])
    quick = json.loads(events[1][1])
    assert quick["text"] in sources[quick["n"] - 1]["text"] and quick["link"]
    checked = json.loads(events[-2][1])
    assert {"text", "segments", "unsupported", "cited", "removed_citations"} <= set(checked)
    done = json.loads(events[-1][1])
    assert {"retrieval_ms", "ttft_ms", "tokens_per_s", "unsupported", "cited"} <= set(done)


@pytest.mark.parametrize("body,kwargs,message", [
    (None, {"data": "question=hi"}, "JSON object"),
    ({"question": ""}, {}, "type a question"),
    ({"question": "   \n "}, {}, "type a question"),
    ({"question": "x" * 2001}, {}, "limited to 2,000 characters"),
    ({"question": 42}, {}, "type a question"),
    ({"question": "ok?", "history": "not a list"}, {}, "history must be a list"),
])
def test_api_ask_rejects_bad_requests(client, body, kwargs, message):
    response = client.post("/api/ask", json=body, **kwargs) if body is not None else \
        client.post("/api/ask", **kwargs)
    assert response.status_code == 400 and message in response.json["error"]


def test_chat_page_and_htmx_turn_stream(client):
    page = client.get("/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'hx-post="/chat"' in html and "htmx-2.0.11.min.js" in html and "New conversation" in html
    cid = re.search(r'name="c" value="([^"]+)"', html).group(1)
    turn = client.post("/chat", data={"question": WAL_QUESTION, "c": cid},
                       headers={"HX-Request": "true"})
    assert turn.status_code == 200
    fragment = turn.get_data(as_text=True)
    assert "<html" not in fragment and WAL_QUESTION in fragment
    stream_url = re.search(r'sse-connect="([^"]+)"', fragment).group(1)
    events = parse_sse(client.get(stream_url).get_data(as_text=True))
    kinds = [name for name, _ in events]
    assert kinds[:2] == ["status", "quick"] and events[0][1] == "Answering…"
    assert 'class="quick"' in events[1][1] and "From the posts" in events[1][1]
    assert "token" in kinds and kinds[-3:] == ["answer", "sources", "end"]
    assert kinds.index("token") < kinds.index("answer")
    sources_html = events[-2][1]
    assert 'href="https://til.example/sqlite/enabling-wal-mode#' in sources_html
    # Reloading the page shows the finished turn, rendered, with its sources.
    again = client.get(f"/?c={cid}").get_data(as_text=True)
    assert WAL_QUESTION in again and 'class="sources"' in again and "sse-connect" not in again
    assert 'class="quick"' in again


def test_chat_works_without_javascript(client):
    response = client.post("/chat", data={"question": WAL_QUESTION, "c": "plain"})
    assert response.status_code == 303
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert WAL_QUESTION in page and 'class="sources"' in page


def test_chat_rejects_empty_question_with_a_message(client):
    response = client.post("/chat", data={"question": "  "}, headers={"HX-Request": "true"})
    assert response.status_code == 400 and "Please type a question." in response.get_data(as_text=True)


def test_follow_up_in_a_conversation_uses_its_history(client):
    client.post("/chat", data={"question": "What is uv?", "c": "conv"})
    client.post("/chat", data={"question": "and how do I install it?", "c": "conv"})
    page = client.get("/?c=conv").get_data(as_text=True)
    second_turn = page.split('class="turn"')[2]
    assert "uv/" in second_turn  # the follow-up's sources come from the uv posts


def test_model_output_and_post_text_are_rendered_inert(app):
    hostile = ('Hi <script>alert(1)</script> [click](javascript:alert(2)) '
               '[data](data:text/html;base64,PHNjcmlwdD4=) <img src=x onerror=alert(3)> '
               '[ok](https://til.example/a) [rel](/b)')
    html = str(render_markdown(hostile))
    tags = re.findall(r"<[^>]+>", html)
    assert not any(t.startswith(("<script", "<img")) for t in tags)
    assert not any(bad in t for t in tags for bad in ("onerror", "javascript:", "data:"))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown as text, not run
    assert 'href="https://til.example/a"' in html and 'href="/b"' in html
    # Source snippets are escaped by the template.
    from ragserver.web.conversations import Turn

    with app.test_request_context():
        from flask import render_template

        turn = Turn(id="t", question="<b>q</b>", sources=[{
            "n": 1, "title": "<script>alert(4)</script>", "text": "<img src=x onerror=alert(5)>",
            "link": "javascript:alert(6)", "source": "x.md"}])
        rendered = render_template("chat/_turn.html", turn=turn, streaming=False,
                                   render=lambda t: render_markdown(t.answer))
    assert "<script>" not in rendered and "<img" not in rendered and "<b>q</b>" not in rendered
    assert "javascript:" not in rendered


def _serve(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


def test_client_disconnect_frees_the_model(app):
    server = _serve(app)
    gate = app.extensions["ragserver"].gate
    try:
        body = json.dumps({"question": WAL_QUESTION}).encode()
        sock = socket.create_connection(("127.0.0.1", server.server_port), timeout=120)
        sock.sendall(b"POST /api/ask HTTP/1.1\r\nHost: localhost\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        reader = sock.makefile("rb")
        tokens = 0
        while tokens < 3:
            tokens += reader.readline().startswith(b"event: token")
        assert gate.busy
        reader.close()
        sock.close()  # the reader goes away mid-answer
        deadline = time.time() + 5
        while gate.busy and time.time() < deadline:
            time.sleep(0.05)
        assert not gate.busy, "the model stayed busy after the client left"
        second = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=120)
        second.request("POST", "/api/ask", body=json.dumps({"question": WAL_QUESTION}),
                       headers={"Content-Type": "application/json"})
        events = parse_sse(second.getresponse().read().decode())
        assert events[-1][0] == "done"
    finally:
        server.shutdown()


def test_chat_page_fills_in_a_question_from_q(client):
    """The widget's "Ask" action opens /?q=...: the question is waiting in the form, escaped."""
    page = client.get("/?q=How+do+I+use+%3Cb%3EWAL%3C/b%3E%3F").get_data(as_text=True)
    assert "autofocus>How do I use &lt;b&gt;WAL&lt;/b&gt;?</textarea>" in page
    assert "autofocus" not in client.get("/").get_data(as_text=True)


def test_a_second_stream_of_a_turn_waits_for_the_first_instead_of_answering_again(app):
    """An EventSource that reconnects before the server noticed its first connection
    drop (or a second window) gets the finished answer; the model answers once."""
    server = _serve(app)
    try:
        turn = app.test_client().post("/chat", data={"question": WAL_QUESTION, "c": "twice"},
                                      headers={"HX-Request": "true"})
        path = re.search(r'sse-connect="([^"]+)"', turn.get_data(as_text=True)).group(1)
        first = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=120)
        first.request("GET", path)
        first_body = first.getresponse()
        while not first_body.readline().startswith(b"event: token"):
            pass
        second = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=120)
        second.request("GET", path)
        second_events = parse_sse(second.getresponse().read().decode())
        first_events = parse_sse("event: token\n" + first_body.read().decode())
        kinds = [name for name, _ in second_events]
        assert "token" not in kinds and kinds[-3:] == ["answer", "sources", "end"]
        assert dict(second_events)["answer"] == dict(first_events)["answer"]
        assert app.extensions["ragserver"].gate.admitted == 0
    finally:
        server.shutdown()


# -- a finished answer on the page, and example questions -------------------

SUPPORTED = "Run PRAGMA journal_mode=WAL on the database to turn WAL mode on [1]."
INVENTED = "WAL mode was added to SQLite by Ada Lovelace in 1843."
WAL_SOURCE = {"n": 1, "title": "Enabling WAL mode for SQLite database files", "headings": [],
              "text": "sqlite3 my.db 'PRAGMA journal_mode=wal;'",
              "link": "https://til.example/sqlite/enabling-wal-mode#enabling-wal-mode",
              "source": "sqlite/enabling-wal-mode.md"}


def finished_turn(app, cid: str, question: str = WAL_QUESTION):
    """A turn holding a checked answer whose second sentence the sources do not support,
    as _run_turn leaves it (no model involved: the rendering is what is tested)."""
    turn = app.extensions["ragserver"].conversations.add(cid, question)
    turn.answer = f"{SUPPORTED} {INVENTED}"
    turn.segments = [
        {"kind": "prose", "text": SUPPORTED, "supported": True, "sources": [1], "missing": []},
        {"kind": "prose", "text": INVENTED, "supported": False, "sources": [],
         "missing": ["1843", "ada", "lovelace"]},
    ]
    turn.sources = [WAL_SOURCE]
    turn.quick = {"text": WAL_SOURCE["text"], "n": 1, "score": 0.7, "ms": 40.0,
                  "title": WAL_SOURCE["title"], "link": WAL_SOURCE["link"]}
    turn.timings = {"retrieval_ms": 12.0, "ttft_ms": 900.0, "tokens": 30, "tokens_per_s": 20.5,
                    "quick_ms": 40.0}
    turn.state = "done"
    return turn


def test_an_unsupported_sentence_is_marked_after_it(app, client):
    finished_turn(app, "marked")
    page = client.get("/?c=marked").get_data(as_text=True)
    assert page.count('class="unsupported"') == 1
    assert re.search(r'Ada Lovelace in 1843\.<span class="unsupported" title="[^"]+">', page)
    assert 'mode on <a class="cite"' in page  # the supported sentence: cited, not marked
    assert 'data-copy="' + SUPPORTED in page  # Copy answer holds the Markdown
    assert '<details class="timings">' in page  # closed until asked for


@pytest.mark.parametrize("title,question", [
    ("How to call pip programatically from Python",
     "How do I call pip programatically from Python?"),
    ("how to  use uv.", "How do I use uv?"),
    ("Is SQLite fast enough?", "Is SQLite fast enough?"),
    ("The simplest recursive CTE",
     "What does the blog say about “The simplest recursive CTE”?"),
    ("How to", "What does the blog say about “How to”?"),
])
def test_example_question_from_a_title(title, question):
    assert example_question(title) == question


def test_example_posts_newest_first_undated_last(db):
    def post(source, title, date):
        db.write_post(NewPost(source=source, origin="test", title=title, url=f"/{source}",
                              date=date, tags=(), content_hash=source), [], [])

    post("a", "Undated first", None)
    post("b", "Older", "2023-01-05")
    post("c", "Newest", "2024-06-01T09:00:00+00:00")
    post("d", "   ", "2025-01-01")  # no title: nothing to ask about
    post("e", "Undated second", None)
    post("f", "Same day", "2023-01-05")
    assert [p.title for p in db.example_posts(10)] == [
        "Newest", "Older", "Same day", "Undated first", "Undated second"]
    assert db.example_posts(2) == [ExamplePost("Newest", "/c"), ExamplePost("Older", "/b")]


def test_an_empty_conversation_shows_example_questions(client, seeded_conn):
    page = client.get("/").get_data(as_text=True)
    buttons = re.findall(r'<button type="button" class="example" data-question="([^"]*)">'
                         r'([^<]*)</button>', page)
    assert all(question == text for question, text in buttons)
    shown = [html.unescape(text) for _, text in buttons]
    expected = [example_question(p.title) for p in seeded_conn.example_posts(4)]
    assert shown == expected and len(shown) == 4
    assert 'href="/search"' in page


def test_a_conversation_with_turns_shows_no_examples(app, client):
    finished_turn(app, "going")
    page = client.get("/?c=going").get_data(as_text=True)
    assert 'class="example"' not in page and 'id="examples"' not in page


@pytest.mark.parametrize("contents", [None, b"", b"not a database at all " * 100, "empty schema"])
def test_no_examples_without_posts_and_never_an_error(tmp_path, contents):
    path = tmp_path / "blog.db"
    if contents == "empty schema":
        conn = open_storage(path, create=True)
        conn.close()
    elif contents is not None:
        path.write_bytes(contents)
    response = create_app({"db": str(path)}).test_client().get("/")
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert 'class="example"' not in page and 'href="/search"' in page


def test_without_a_model_the_server_answers_with_quotes(seeded_db, embedder):
    """RAGSERVER_LLM_MODEL=none: a search-and-quote deployment, no language model at all."""
    client = create_app({"db": str(seeded_db), "llm_model": "none"}, embedder=embedder).test_client()
    events = parse_sse(client.post("/api/ask", json={"question": WAL_QUESTION}).get_data(as_text=True))
    assert [name for name, _ in events] == ["sources", "quick", "done"]
    done = json.loads(events[-1][1])
    assert done["answered"] and done["model"] is None
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json["llm"]["backend"] == "none"
    turn = client.post("/chat", data={"question": WAL_QUESTION, "c": "quotes"},
                       headers={"HX-Request": "true"})
    stream = re.search(r'sse-connect="([^"]+)"', turn.get_data(as_text=True)).group(1)
    kinds = [name for name, _ in parse_sse(client.get(stream).get_data(as_text=True))]
    assert "quick" in kinds and "token" not in kinds and kinds[-1] == "end"
    page = client.get("/?c=quotes").get_data(as_text=True)
    assert 'class="quick"' in page and "cites none" not in page
