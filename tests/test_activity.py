"""What readers do: the activity store, conversations that outlive the app, permalinks,
feedback, the owner's report and /admin — with the real embedder, real databases and
real posts."""

from __future__ import annotations

import json
import re
import time

import pytest

from conftest import activity_target, make_database
from ragserver import create_app
from ragserver.activity import DAY, Activity, parse_age
from ragserver.report import SAME_QUESTION, THEME_SIMILARITY, build_report, group

WAL = "How do I enable WAL mode for a SQLite database?"
OFF_TOPIC = "What is the best recipe for a lemon drizzle cake?"
TOKEN = "a-long-enough-admin-token-for-tests"


@pytest.fixture
def store(request, backend, tmp_path):
    """An empty activity store of the backend under test."""
    target = make_database(request, backend, tmp_path, "activity")
    if backend == "sqlite":
        target = str(tmp_path / "activity.db")
    store = Activity(target)
    yield store
    store.close()


def ask_without_javascript(client, question: str, cid: str = "") -> str:
    """Ask through the plain form; the id of the new turn (from the redirect's anchor)."""
    response = client.post("/chat", data={"question": question, "c": cid})
    assert response.status_code == 303, response.get_data(as_text=True)
    return re.search(r"#turn-([\w-]+)$", response.headers["Location"]).group(1)


# -- the store -------------------------------------------------------------------------

def test_a_turn_is_kept_from_question_to_answer(store):
    store.start_turn("t1", "c1", "What is WAL?", "chat")
    pending = store.turn("t1")
    assert pending.state == "pending" and pending.answer == "" and pending.finished is None
    store.finish_turn("t1", answer="WAL is a journal mode [1].", state="done", answered=True,
                      similarity=0.71, sources=[{"n": 1, "title": "WAL", "url": "https://x/wal"}],
                      quick={"n": 1, "text": "PRAGMA journal_mode=WAL"}, segments=[{"text": "x"}],
                      timings={"tokens": 7}, error="")
    done = store.turn("t1")
    assert (done.state, done.answered, done.similarity) == ("done", True, 0.71)
    assert done.sources[0]["url"] == "https://x/wal" and done.quick["n"] == 1
    assert done.timings == {"tokens": 7} and done.finished >= done.asked
    assert [t.id for t in store.conversation("c1")] == ["t1"]
    assert store.turn("nope") is None and store.conversation("nope") == []


def test_feedback_needs_a_known_answer(store):
    store.start_turn("t1", "c1", "q", "chat")
    assert store.add_feedback("t1", -1, "wrong post") is True
    assert store.add_feedback("t1", 1, "") is True
    assert store.add_feedback("unknown", 1, "") is False
    assert store.votes("t1") == {"up": 1, "down": 1}
    assert [f["comment"] for f in store.feedback_since(0)] == ["wrong post", ""]


def test_prune_removes_only_what_is_older_than_the_retention(store):
    store.start_turn("old", "c1", "old question", "chat")
    store.add_feedback("old", -1, "")
    store.record_empty_search("zebra", "hybrid")
    later = time.time() + 91 * DAY
    store.start_turn("new", "c2", "new question", "chat")
    removed = store.prune(90, now=later)
    assert removed == {"feedback": 1, "turns": 2, "searches": 1}
    store.start_turn("kept", "c3", "kept", "chat")
    assert store.prune(90) == {"feedback": 0, "turns": 0, "searches": 0}
    assert store.turn("kept") is not None


def test_export_is_every_record_with_its_type(store):
    store.start_turn("t1", "c1", "q", "api")
    store.add_feedback("t1", 1, "thanks")
    store.record_empty_search("nothing here", "keyword")
    records = list(store.export())
    assert [r["type"] for r in records] == ["turn", "feedback", "empty_search"]
    assert records[0]["via"] == "api" and records[2]["query"] == "nothing here"
    json.dumps(records)  # NDJSON-ready


def test_activity_goes_beside_the_posts_by_default():
    from ragserver.activity import activity_target
    from ragserver.config import load_settings

    beside = load_settings(environ={}, db="/srv/blog/posts.db")
    assert activity_target(beside) == "/srv/blog/activity.db"
    url = "postgresql://blog@db.example/blog"
    assert activity_target(load_settings(environ={"RAGSERVER_DATABASE_URL": url})) == url
    chosen = load_settings(environ={"RAGSERVER_ACTIVITY_DB": "~/readers.db"}, db="/srv/p.db")
    assert activity_target(chosen).endswith("/readers.db") and "~" not in activity_target(chosen)
    assert activity_target(load_settings(environ={"RAGSERVER_ACTIVITY_DB": "off"})) == ""
    with pytest.raises(ValueError, match="names the posts database itself"):
        load_settings(environ={"RAGSERVER_ACTIVITY_DB": "/srv/blog/posts.db"}, db="/srv/blog/posts.db")


@pytest.mark.parametrize("text,seconds", [("30d", 30 * DAY), ("12h", 43200), ("2w", 14 * DAY),
                                          ("90m", 5400), ("7", 7 * DAY)])
def test_ages(text, seconds):
    assert parse_age(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-3d", "d"])
def test_bad_ages_are_refused(text):
    with pytest.raises(ValueError):
        parse_age(text)


@pytest.mark.backends("sqlite")
def test_a_write_that_fails_is_counted_not_raised(tmp_path):
    folder = tmp_path / "not-a-file"
    folder.mkdir()
    store = Activity(str(folder))  # a folder where the database file should be
    store.start_turn("t1", "c1", "q", "chat")
    assert store.failures == 1 and store.last_error
    assert store.status()["failed_writes"] == 1


# -- the web app -----------------------------------------------------------------------

def test_conversations_and_permalinks_survive_a_restart(request, seeded_db, embedder):
    config = {"db": str(seeded_db), "activity_db": activity_target(request, seeded_db),
              "llm_model": "none"}
    first = create_app(config, embedder=embedder).test_client()
    cid = "restart-" + str(time.time_ns())
    turn_id = ask_without_javascript(first, WAL, cid)
    second = create_app(config, embedder=embedder).test_client()  # a new process's state
    page = second.get(f"/?c={cid}").get_data(as_text=True)
    assert WAL in page and f'id="turn-{turn_id}"' in page and "journal_mode" in page
    permalink = second.get(f"/a/{turn_id}")
    body = permalink.get_data(as_text=True)
    assert permalink.status_code == 200 and permalink.headers["X-Robots-Tag"] == "noindex"
    assert WAL in body and "journal_mode" in body and 'class="sources"' in body
    assert cid not in body  # a shared answer does not open its conversation
    assert second.get("/a/not-an-answer").status_code == 404


def test_a_conversation_goes_on_after_a_restart(request, seeded_db, embedder):
    config = {"db": str(seeded_db), "activity_db": activity_target(request, seeded_db),
              "llm_model": "none"}
    cid = "goes-on-" + str(time.time_ns())
    first_turn = ask_without_javascript(create_app(config, embedder=embedder).test_client(),
                                        WAL, cid)
    client = create_app(config, embedder=embedder).test_client()
    second_turn = ask_without_javascript(client, "How do I check that it worked?", cid)
    turns = client.application.extensions["ragserver"].conversations.turns(cid)
    assert [t.id for t in turns] == [first_turn, second_turn]
    assert [t.state for t in turns] == ["done", "done"] and turns[0].quick


def test_the_answer_api_gives_a_permalink(client):
    response = client.post("/api/ask", json={"question": WAL})
    done = [line for line in response.get_data(as_text=True).split("\n\n") if "event: done" in line]
    data = json.loads(done[0].split("data: ", 1)[1])
    assert data["permalink"].endswith(f"/a/{data['id']}")
    assert WAL in client.get(f"/a/{data['id']}").get_data(as_text=True)
    stored = client.application.extensions["ragserver"].activity.turn(data["id"])
    assert stored.via == "api" and stored.state == "done" and stored.sources


def test_a_refused_question_is_stored_as_unanswered(client):
    turn_id = ask_without_javascript(client, OFF_TOPIC)
    stored = client.application.extensions["ragserver"].activity.turn(turn_id)
    assert stored.answered is False and stored.similarity is not None and stored.sources == []


def test_feedback_round_trips(client):
    turn_id = ask_without_javascript(client, WAL)
    page = client.get(f"/a/{turn_id}").get_data(as_text=True)
    assert f'action="/a/{turn_id}/feedback"' in page and 'name="vote"' in page
    sent = client.post(f"/a/{turn_id}/feedback", data={"vote": "down", "comment": "Wrong post"})
    assert sent.status_code == 303 and sent.headers["Location"].endswith(f"/a/{turn_id}?thanks=1")
    assert "feedback was recorded" in client.get(sent.headers["Location"]).get_data(as_text=True)
    htmx = client.post(f"/a/{turn_id}/feedback", data={"vote": "up"}, headers={"HX-Request": "true"})
    assert htmx.status_code == 200 and "feedback was recorded" in htmx.get_data(as_text=True)
    store = client.application.extensions["ragserver"].activity
    assert store.votes(turn_id) == {"up": 1, "down": 1}
    assert [f["comment"] for f in store.feedback_since(0) if f["turn"] == turn_id] == ["Wrong post", ""]
    api = client.post("/api/feedback", json={"id": turn_id, "vote": "up"})
    assert api.status_code == 200 and api.get_json()["ok"] is True
    assert store.votes(turn_id) == {"up": 2, "down": 1}


def test_bad_feedback_gets_a_clear_message_and_keeps_the_comment(client):
    turn_id = ask_without_javascript(client, WAL)
    bad = client.post(f"/a/{turn_id}/feedback", data={"vote": "maybe", "comment": "kept text"})
    assert bad.status_code == 400 and "vote up or down" in bad.get_data(as_text=True)
    assert 'value="kept text"' in bad.get_data(as_text=True)
    htmx = client.post(f"/a/{turn_id}/feedback", data={"comment": "x" * 2001, "vote": "up"},
                       headers={"HX-Request": "true"})
    assert "the limit is 2000" in htmx.get_data(as_text=True) and "x" * 2001 in htmx.get_data(as_text=True)
    assert client.post("/a/nothing-here/feedback", data={"vote": "up"}).status_code == 404
    assert client.post("/api/feedback", json={"vote": "up"}).status_code == 400
    assert client.post("/api/feedback", json={"id": "nothing", "vote": "up"}).status_code == 404
    store = client.application.extensions["ragserver"].activity
    assert store.votes(turn_id) == {"up": 0, "down": 0}


@pytest.mark.app({"feedback_rate": 2})
def test_feedback_is_rate_limited(client):
    turn_id = ask_without_javascript(client, WAL)
    codes = [client.post("/api/feedback", json={"id": turn_id, "vote": "up"}).status_code
             for _ in range(3)]
    assert codes == [200, 200, 429]
    assert client.application.extensions["ragserver"].activity.votes(turn_id)["up"] == 2


def test_a_search_that_finds_nothing_is_kept_and_others_are_not(client):
    store = client.application.extensions["ragserver"].activity
    before = len(store.empty_searches_since(0))
    nothing = client.get("/api/search?q=xylophonequartz&mode=keyword").get_json()
    assert nothing["results"] == []
    assert client.get("/api/search?q=sqlite+wal&mode=keyword").get_json()["results"]
    searches = store.empty_searches_since(0)
    assert len(searches) == before + 1 and searches[-1]["query"] == "xylophonequartz"


def test_healthz_names_the_activity_store(client):
    activity = client.get("/healthz").get_json()["activity"]
    assert activity["failed_writes"] == 0 and activity["retention_days"] == 90
    assert activity["last_write_ok"] is True and activity["last_error"] is None


@pytest.mark.app({"activity_db": "off"})
def test_with_activity_off_the_chat_works_and_feedback_says_why(client):
    turn_id = ask_without_javascript(client, WAL)
    assert "journal_mode" in client.get(f"/a/{turn_id}").get_data(as_text=True)
    refused = client.post("/api/feedback", json={"id": turn_id, "vote": "up"})
    assert refused.status_code == 503 and "RAGSERVER_ACTIVITY_DB is off" in refused.get_json()["error"]
    assert client.get("/healthz").get_json()["activity"] is None


@pytest.mark.backends("sqlite")
def test_an_unwritable_activity_store_never_stops_an_answer(tmp_path, seeded_db, embedder):
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    app = create_app({"db": str(seeded_db), "activity_db": str(blocked), "llm_model": "none"},
                     embedder=embedder)
    client = app.test_client()
    response = client.post("/api/ask", json={"question": WAL})
    assert response.status_code == 200 and "event: done" in response.get_data(as_text=True)
    health = client.get("/healthz").get_json()["activity"]
    assert health["failed_writes"] >= 2 and health["last_error"]


# -- the owner's report ----------------------------------------------------------------

SEEDED = [  # (question, answered, similarity) as readers asked them
    ("How do I enable WAL mode in SQLite?", True, 0.74),
    ("how do i enable wal mode in sqlite", True, 0.74),
    ("How to turn on WAL mode for my SQLite database?", True, 0.66),
    ("How do I enable the WAL mode of a SQLite database?", True, 0.7),
    ("How do I install a Python tool with uv?", True, 0.69),
    ("Best way to install Python command line tools using uv?", True, 0.63),
    ("How do I bake sourdough bread?", False, 0.21),
    ("What flour is best for a sourdough loaf?", False, 0.24),
    ("Which football team won the 2022 World Cup?", False, 0.12),
]


def seed(store: Activity) -> list[str]:
    ids = []
    for i, (question, answered, similarity) in enumerate(SEEDED):
        turn_id = f"seed{i}"
        store.start_turn(turn_id, f"conv{i % 3}", question, "chat")
        sources = [{"n": 1, "title": "Enabling WAL mode for SQLite databases",
                    "url": "https://til.example/sqlite/enabling-wal-mode"}] if answered else []
        store.finish_turn(turn_id, answer="Run PRAGMA journal_mode=wal [1]." if answered else "",
                          state="done", answered=answered, similarity=similarity,
                          sources=sources, quick=None, segments=[], timings={}, error="")
        ids.append(turn_id)
    store.add_feedback("seed3", -1, "It did not say how to check it worked")
    store.add_feedback("seed0", 1, "")
    for query in ("kubernetes", "Kubernetes ", "fortran"):
        store.record_empty_search(query, "hybrid")
    return ids


def test_the_report_groups_questions_and_unanswered_themes(store, embedder):
    seed(store)
    report = build_report(store, embedder, since=DAY, min_score=0.45)
    totals = report["totals"]
    assert (totals["questions"], totals["unanswered"], totals["feedback_down"]) == (9, 3, 1)
    wal = report["most_asked"][0]
    assert wal["count"] == 4 and "WAL" in wal["question"]
    uv = next(g for g in report["most_asked"] if "uv" in g["question"])
    assert uv["count"] == 2 and uv["wordings"] == 2
    themes = report["unanswered_themes"]
    assert themes[0]["count"] == 2 and "sourdough" in themes[0]["question"].lower()
    assert themes[1]["count"] == 1 and "World Cup" in themes[1]["question"]
    assert report["marked_down"][0]["comment"] == "It did not say how to check it worked"
    assert report["empty_searches"][0] == {"query": "kubernetes", "count": 2}
    assert report["most_cited"][0]["answers"] == 6


def test_grouping_keeps_different_questions_apart(embedder):
    texts = ["How do I enable WAL mode in SQLite?", "How do I vacuum a SQLite database?",
             "How do I install a Python tool with uv?"]
    assert len(group(texts, ["a", "b", "c"], embedder, SAME_QUESTION)) == 3
    assert THEME_SIMILARITY < SAME_QUESTION


def test_ragserver_report_on_a_seeded_store(runner, tmp_path, backend, request):
    target = str(tmp_path / "activity.db") if backend == "sqlite" else \
        make_database(request, backend, tmp_path, "report")
    seed(Activity(target))
    env = {"RAGSERVER_ACTIVITY_DB": target, "RAGSERVER_DB": str(tmp_path / "posts.db")}
    text = runner("report", "--since", "7d", env=env, check=True).stdout
    assert "Most asked" in text and "What to write next" in text
    assert re.search(r"^\s+4\s+How do I enable WAL mode in SQLite\?", text, re.MULTILINE)
    assert re.search(r"^\s+2\s+.*sourdough", text, re.MULTILINE | re.IGNORECASE)
    assert "It did not say how to check it worked" in text and "/a/seed3" in text
    as_json = json.loads(runner("report", "--json", env=env, check=True).stdout)
    assert as_json["totals"]["questions"] == 9
    exported = runner("activity", "export", env=env, check=True).stdout.splitlines()
    assert len(exported) == 9 + 2 + 3 and json.loads(exported[0])["type"] == "turn"
    pruned = runner("activity", "prune", "--days", "0", env=env, check=True)
    assert "removed 9 answer(s), 2 feedback mark(s) and 3 search(es)" in pruned.stdout
    bad = runner("report", "--since", "lately", env=env)
    assert bad.returncode == 2 and "not an age" in bad.stderr
    off = runner("report", env={**env, "RAGSERVER_ACTIVITY_DB": "off"})
    assert off.returncode == 1 and "keeps no activity" in off.stderr


# -- /admin ------------------------------------------------------------------------------

def test_no_admin_page_without_a_token(client):
    assert client.get("/admin").status_code == 404
    assert client.get("/admin/report.json").status_code == 404


@pytest.mark.app({"admin_token": TOKEN})
def test_the_admin_page_refuses_without_the_token(client):
    page = client.get("/admin")
    assert page.status_code == 401 and 'name="token"' in page.get_data(as_text=True)
    assert client.get(f"/admin?token={TOKEN}").status_code == 401  # never in a URL
    assert client.get("/admin", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/admin/report.json").status_code == 401
    wrong = client.post("/admin", data={"token": "not it"})
    assert wrong.status_code == 401 and "not the admin token" in wrong.get_data(as_text=True)
    client.set_cookie("ragserver_admin", f"{int(time.time()) + 3600}.forged", path="/admin")
    assert client.get("/admin").status_code == 401


@pytest.mark.app({"admin_token": TOKEN})
def test_the_admin_page_shows_the_report_with_the_token(client):
    ask_without_javascript(client, OFF_TOPIC)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    page = client.get("/admin", headers=headers)
    body = page.get_data(as_text=True)
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    assert "What to write next" in body and "lemon drizzle" in body
    report = client.get("/admin/report.json?since=7d", headers=headers).get_json()
    assert report["totals"]["unanswered"] >= 1
    signed = client.post("/admin", data={"token": TOKEN})
    assert signed.status_code == 303
    cookie = signed.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin" in cookie
    assert TOKEN not in cookie
    assert client.get("/admin").status_code == 200  # the cookie alone
    client.post("/admin/sign-out")
    assert client.get("/admin").status_code == 401


@pytest.mark.app({"admin_token": TOKEN})
def test_admin_sign_in_attempts_are_limited(client):
    codes = [client.post("/admin", data={"token": f"guess {i}"}).status_code for i in range(11)]
    assert codes[:10] == [401] * 10 and codes[10] == 429


def test_a_short_admin_token_is_refused(seeded_db, embedder):
    with pytest.raises(ValueError, match="at least 16 characters"):
        create_app({"db": str(seeded_db), "admin_token": "short"}, embedder=embedder)


def test_the_web_embedder_remembers_question_vectors(embedder):
    import numpy as np

    from ragserver.embedder import CachedQueries

    cached = CachedQueries(embedder)
    texts = ["How do I enable WAL mode?", "What is uv?", "How do I enable WAL mode?"]
    first = cached.embed_queries(texts)
    again = cached.embed_queries(texts[:2])
    assert first.shape == (3, 384) and np.allclose(first[0], first[2])
    assert np.allclose(again, first[:2]) and np.allclose(first, embedder.embed_queries(texts), atol=1e-5)
    assert cached.embed_queries([]).shape == (0, 384)
    assert sorted(cached._questions) == sorted(set(texts))  # each embedded once, kept


def test_a_question_is_embedded_once_and_the_report_reuses_its_vector(client, embedder):
    import numpy as np

    turn_id = ask_without_javascript(client, "How do I enable WAL mode, please?")
    store = client.application.extensions["ragserver"].activity
    kept = store.question_vectors(0, embedder.info.name)
    vector = np.frombuffer(kept["How do I enable WAL mode, please?"], dtype=np.float32)
    assert np.allclose(vector, embedder.embed_query("How do I enable WAL mode, please?"), atol=1e-5)
    assert store.question_vectors(0, "another/model") == {}

    class Counting:  # the real embedder, counting what the report embeds
        info = embedder.info

        def __init__(self):
            self.embedded = []

        def embed_queries(self, texts):
            self.embedded += texts
            return embedder.embed_queries(texts)

    counting = Counting()
    store.start_turn("later", "c-later", "What is uv?", "chat")  # asked, never finished
    report = build_report(store, counting, since=DAY, min_score=0.45)
    assert report["totals"]["questions"] >= 2 and store.turn(turn_id).state == "done"
    assert counting.embedded == ["What is uv?"]
