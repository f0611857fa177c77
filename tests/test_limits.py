"""Abuse limits: per-client rates, a capped model queue, and disconnects that free the model."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from conftest import running_server
from ragserver.gate import Gate
from ragserver.web.limits import RateLimit
from test_chat import parse_sse

QUESTION = "How do I enable WAL mode for a SQLite database?"

pytestmark = pytest.mark.app({"max_answer_tokens": 24, "search_rate": 3, "ask_rate": 2,
                              "max_waiting": 1}, llm=True)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_rate_limit_allows_a_burst_then_refills_per_client():
    clock = Clock()
    limit = RateLimit(6, clock=clock)  # 6 a minute: one every 10 s
    assert [limit.take("a") for _ in range(6)] == [0.0] * 6
    assert limit.take("a") == pytest.approx(10.0)
    assert limit.take("b") == 0.0  # another client has its own bucket
    clock.now += 5
    assert limit.take("a") == pytest.approx(5.0)
    clock.now += 5
    assert limit.take("a") == 0.0
    clock.now += 3600  # idle buckets are dropped, and come back full
    limit.take("c")
    assert "a" not in limit._buckets and limit.take("a") == 0.0
    assert RateLimit(0).take("a") == 0.0  # 0: no limit


def test_gate_serves_in_arrival_order_and_tells_each_its_place():
    gate = Gate()
    assert list(gate.wait(5)) == []  # free: taken at once
    served, seen = [], {}

    def question(name):
        seen[name] = list(gate.wait(30, poll=0.05))
        served.append(name)
        time.sleep(0.1)  # answering
        gate.release()

    threads = []
    for i, name in enumerate("abcd"):
        threads.append(threading.Thread(target=question, args=(name,)))
        threads[-1].start()
        while gate.waiting <= i:  # in line before the next one arrives
            time.sleep(0.01)
    gate.release()
    for thread in threads:
        thread.join()
    assert served == list("abcd")
    assert seen["d"][0] == 4 and seen["d"][-1] == 1  # moved up as the others were served
    assert not gate.busy and gate.waiting == 0


def test_searches_over_the_rate_get_429_with_retry_after(app):
    client = app.test_client()
    assert [client.get("/api/search?q=wal").status_code for _ in range(3)] == [200] * 3
    refused = client.get("/api/search?q=wal")
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 20
    assert "Too many searches" in refused.get_json()["error"]
    page = client.get("/search?q=wal", headers={"HX-Request": "true"})
    assert page.status_code == 429 and b"Too many searches" in page.data
    related = client.get("/api/related?source=sqlite/enabling-wal-mode.md")
    assert related.status_code == 429
    other = app.test_client().get("/api/search?q=wal", environ_base={"REMOTE_ADDR": "10.0.0.2"})
    assert other.status_code == 200  # the limit is per client


def test_questions_over_the_rate_get_429(app):
    client = app.test_client()
    for _ in range(2):
        assert b"event: done" in client.post("/api/ask", json={"question": QUESTION}).data
    refused = client.post("/api/ask", json={"question": QUESTION})
    assert refused.status_code == 429 and refused.headers["Retry-After"]
    assert "Too many questions" in refused.get_json()["error"]
    form = client.post("/chat", data={"question": QUESTION}, headers={"HX-Request": "true"})
    assert form.status_code == 429 and b"Too many questions" in form.data


def test_full_queue_gets_429_until_a_place_is_free(app):
    gate = app.extensions["ragserver"].gate
    places = [gate.admit(), gate.admit()]  # one answering, one waiting: max_waiting=1
    assert gate.admit() is None
    client = app.test_client()
    refused = client.post("/api/ask", json={"question": QUESTION})
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "The model is busy" in refused.get_json()["error"]
    form = client.post("/chat", data={"question": QUESTION}, headers={"HX-Request": "true"})
    assert form.status_code == 429 and b"The model is busy" in form.data
    places[0].give_back()
    places[0].give_back()  # twice is harmless
    answered = client.post("/api/ask", json={"question": QUESTION}, environ_base={"REMOTE_ADDR": "10.0.0.3"})
    assert answered.status_code == 200 and parse_sse(answered.get_data(as_text=True))[-1][0] == "done"
    assert gate.admitted == 1  # the answered question gave its place back
    places[1].give_back()
    assert gate.admitted == 0


def _ask_over_http(url: str) -> tuple[int, dict, list]:
    request = urllib.request.Request(f"{url}/api/ask", data=json.dumps({"question": QUESTION}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, dict(response.headers), parse_sse(response.read().decode())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), [("error", error.read().decode())]


@pytest.fixture(scope="module")
def server(seeded_db, tmp_path_factory):
    env = {"RAGSERVER_MAX_WAITING": "2", "RAGSERVER_MAX_ANSWER_TOKENS": "384"}
    with running_server(seeded_db, tmp_path_factory.mktemp("gunicorn") / "server.log", env) as url:
        yield url


def test_a_burst_of_questions_is_answered_or_refused_clearly(server):
    """Eight questions at once with room for three: each is answered or gets 429, none fails."""
    results = [None] * 8

    def one(i):
        results[i] = _ask_over_http(server)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    answered = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 429]
    assert len(answered) + len(refused) == 8, [r[:1] + (r[2][-1:],) for r in results]
    assert 1 <= len(answered) <= 3 and refused  # at most one answering and two waiting
    for _, _, events in answered:
        assert events[-1][0] == "done" and "error" not in [name for name, _ in events]
    for _, headers, events in refused:
        assert int(headers["Retry-After"]) >= 1 and "The model is busy" in events[0][1]


def _model_busy(url: str) -> bool:
    try:
        body = urllib.request.urlopen(f"{url}/healthz", timeout=30).read()
    except urllib.error.HTTPError as error:
        body = error.read()
    return json.loads(body)["llm"]["busy"]


def test_hanging_up_mid_answer_frees_the_model(server):
    """A client that disconnects after its first token stops the generation (384 tokens
    would keep the model for about ten seconds more)."""
    host, port = urllib.parse.urlsplit(server).netloc.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    conn.request("POST", "/api/ask", body=json.dumps({"question": QUESTION}),
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    while b"event: token" not in response.readline():
        pass
    assert _model_busy(server)
    conn.sock.close()  # hang up mid-stream
    conn.close()
    deadline = time.monotonic() + 5
    while _model_busy(server):
        assert time.monotonic() < deadline, "the model kept generating for a client that left"
        time.sleep(0.1)
    status, _, events = _ask_over_http(server)
    assert status == 200 and events[-1][0] == "done"


def test_postgres_workers_share_rate_limits_where_sqlite_workers_count_alone(seeded_db, embedder):
    """Two apps are two workers (or machines): on PostgreSQL a client's searches count in
    the database, so its fourth search is refused whichever worker gets it."""
    from conftest import forget_rate_limits
    from ragserver import create_app

    forget_rate_limits(seeded_db)
    workers = [create_app({"db": str(seeded_db), "search_rate": 3}, embedder=embedder)
               for _ in range(2)]
    codes = [workers[n % 2].test_client().get("/api/search?q=wal+mode").status_code
             for n in range(4)]
    shared = not str(seeded_db).startswith("/")  # a URL: PostgreSQL
    assert codes == ([200, 200, 200, 429] if shared else [200, 200, 200, 200])
