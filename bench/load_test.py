"""Load test on loopback: many searchers, questions at once, clients that hang up.

    python bench/load_test.py [--quick]        # or: ./run bench load [--quick]

gunicorn is started from the Procfile (tests/server.py) on the shared corpus (282
posts, ingested once into /tmp/ragserver-bench/). Every phase has a time limit and every
request a timeout, so the run always ends. Phases:

- search: N clients (threads, one keep-alive HTTP connection each) send GET /api/search
  back to back for a fixed time, with post titles (in four letter cases), headings and
  the first words of passages, shuffled, so the server's query-vector cache rarely has
  the text. An error is any non-200, exception, timeout or body that is not the JSON
  expected. Also the worker's peak RSS and CPU time.
- chat: M clients POST /api/ask at once and read the event stream to its end; each is
  completed, queued-then-completed, refused (429 with Retry-After and a JSON error) or
  failed (anything else).
- disconnect: on a second server with long answers, one client hangs up at its first
  token; how long until /healthz says the model is free and until the next question's
  first token. Then 3 clients that hang up at their first token and 1 that waits its
  turn and reads to the end, all asked at once.
- combined: the search clients again while the chat clients ask.

Writes bench/load_results.json and the part of docs/reliability.md between its
load-test markers, and prints the Markdown report.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import random
import re
import shlex
import socket
import sqlite3
import sys
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from common import ROOT, Section, machine, percentile, table  # noqa: E402
from corpus import CASES, WORK, corpus_db  # noqa: E402
from tests.server import Server, procfile_command  # noqa: E402

RESULTS = HERE / "load_results.json"
DOC = ROOT / "docs" / "reliability.md"
START, END = "<!-- load-test:start -->", "<!-- load-test:end -->"


@dataclass(frozen=True)
class Plan:
    """How hard and how long each phase pushes."""
    searchers: int
    search_seconds: float
    askers: int
    combined_lead: float  # seconds the searchers run before the questions start


FULL = Plan(searchers=50, search_seconds=60, askers=8, combined_lead=10)
QUICK = Plan(searchers=10, search_seconds=10, askers=3, combined_lead=3)

# Every client shares 127.0.0.1, so per-client rate limits (0: none) would measure the
# limiter rather than the server. Settings not named here keep the server's defaults;
# the report lists how the server reads the ones this test depends on.
COMMON_ENV = {"RAGSERVER_SEARCH_RATE": "0", "RAGSERVER_ASK_RATE": "0"}
REPORTED_SETTINGS = ("search_rate", "ask_rate", "max_waiting", "queue_timeout",
                     "max_answer_tokens", "llm_threads")
SHORT_ANSWERS = {**COMMON_ENV, "RAGSERVER_MAX_ANSWER_TOKENS": "64"}
# Long answers, so that a generation that ran on after a hang-up would show as minutes
# rather than hide inside the time a short answer takes anyway.
LONG_ANSWERS = {**COMMON_ENV, "RAGSERVER_MAX_ANSWER_TOKENS": "384"}

SEARCH_TIMEOUT = 30.0  # a reader who waited longer than this has given up: an error
ASK_TIMEOUT = 240.0  # one question, queue included (the server gives up queueing at 120 s)
READ_TIMEOUT = 60.0  # silence on an answer's stream (queued events come every second)
FREE_GOAL = 5.0  # seconds from a hang-up until the model is free again
FREE_LIMIT = 120.0  # stop polling /healthz after this
POLL = 0.05  # seconds between /healthz polls
RSS_EVERY = 0.2  # seconds between samples of the worker's memory
MB = 2**20

QUESTIONS = [
    "How do I enable WAL mode in SQLite?",
    "How do I create a tarball of a git repository?",
    "How can I run tests against PostgreSQL in GitHub Actions?",
    "How do I hash passwords in Python with pbkdf2?",
    "How do I turn an array of arrays into objects with jq?",
    "How do I use the ChatGPT streaming API from Python?",
    "How do I do efficient bulk deletions in Django?",
    "How do I enable mouse support in vim?",
]
# Others for the combined phase: llama.cpp keeps the last prompt evaluated, and the
# chat phase's last question would otherwise skip its prompt processing.
COMBINED_QUESTIONS = [
    "How do I use namedtuple for pytest parameterized tests?",
    "How do I scrape Reddit via its JSON API?",
    "How do I manipulate query strings with URLSearchParams?",
    "How do I upgrade Postgres.app on macOS?",
    "How do I use the tesseract CLI tool?",
    "How do I call pip programmatically from Python?",
    "How do I use Fabric with an SSH public key?",
    "How do I stream an indented JSON array?",
]
WARM_UP = "How do I calculate the size of a SQLite database file?"
HANG_UP = "How do I introspect Python function parameters?"  # answered at length, in trials
NEXT = "How do I use pipenv with Docker?"
QUEUE_TEST = [  # three that hang up at their first token, then one that waits and reads on
    "How do I run queries against CSV files with SQLite?",
    "How do I clone and push files in a GitHub Gist?",
    "How do I write Fly logs to S3?",
    "How do I attach a generated file to a GitHub release using Actions?",
]


# -- queries ------------------------------------------------------------------------

def search_texts(db: Path) -> list[str]:
    """Distinct real queries from the corpus: titles in four cases, headings, passage openings."""
    from ragserver import store

    # Plain sqlite3: reading posts needs no vector index, and ragserver.db.connect()
    # would import torch into this client process.
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    posts = store.list_posts(conn)
    texts = [case(p.title) for p in posts for case in CASES]
    for post in posts:
        for passage in store.passages_for_post(conn, post.id):
            texts += passage.heading_path
            words = re.findall(r"[A-Za-z][\w'+.-]*", passage.text)
            if len(words) >= 3:
                texts.append(" ".join(words[:6]))
    conn.close()
    unique = list(dict.fromkeys(t.strip() for t in texts if t.strip()))
    random.Random(0).shuffle(unique)
    return unique


class Feed:
    """Hands each search client the next text, round the list."""

    def __init__(self, texts: list[str]):
        self.texts = texts
        self._count = itertools.count()  # next() on a count is atomic under the GIL

    def next(self) -> str:
        """The next query text."""
        return self.texts[next(self._count) % len(self.texts)]


# -- search clients -----------------------------------------------------------------

@dataclass
class SearchLog:
    """Every search as a client saw it: (started, seconds, problem or "")."""
    requests: list = field(default_factory=list)

    def between(self, low: float, high: float) -> list[tuple]:
        """The requests started in [low, high)."""
        return [r for r in self.requests if low <= r[0] < high]


def search_client(port: int, feed: Feed, stop: threading.Event, log: SearchLog) -> None:
    """GET /api/search back to back on one keep-alive connection until `stop`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=SEARCH_TIMEOUT)
    while not stop.is_set():
        path = "/api/search?" + urllib.parse.urlencode({"q": feed.next()})
        started = time.perf_counter()
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            problem = search_problem(response, response.read())
        except (OSError, http.client.HTTPException) as error:
            problem = f"{type(error).__name__}: {error}"
            conn.close()  # the next request opens a fresh connection
        log.requests.append((started, time.perf_counter() - started, problem))
    conn.close()


def search_problem(response, body: bytes) -> str:
    """What is wrong with a search response ("" when nothing is)."""
    if response.status != 200:
        return f"HTTP {response.status}: {body[:200].decode('utf-8', 'replace')}"
    try:
        reply = json.loads(body)
    except ValueError:
        return f"malformed JSON: {body[:200]!r}"
    if not isinstance(reply, dict) or not isinstance(reply.get("results"), list):
        return f"unexpected JSON: {body[:200].decode('utf-8', 'replace')}"
    return ""


class Searchers:
    """N search clients running until the block ends (or `stop()`)."""

    def __init__(self, port: int, feed: Feed, count: int):
        self.log = SearchLog()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=search_client, daemon=True,
                                          args=(port, feed, self._stop, self.log))
                         for _ in range(count)]

    def __enter__(self) -> "Searchers":
        self.started = time.perf_counter()
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Ask every client to stop after its current request, and wait for them."""
        self._stop.set()
        self.stopped = time.perf_counter()
        for thread in self._threads:
            thread.join(SEARCH_TIMEOUT + 5)
        self.hung = sum(thread.is_alive() for thread in self._threads)

    def __exit__(self, *exc) -> None:
        if not self._stop.is_set():
            self.stop()


def summarize_searches(requests: list[tuple], seconds: float | None = None) -> dict:
    """Counts, errors by kind with an example, client-timed latency in ms."""
    ok = [took for _, took, problem in requests if not problem]
    problems = [problem for _, _, problem in requests if problem]
    kinds = Counter(error_kind(p) for p in problems)
    examples = {}
    for problem in problems:
        examples.setdefault(error_kind(problem), problem[:300])
    found = {"requests": len(requests), "errors": len(problems),
             "errors_by_kind": {kind: {"count": n, "example": examples[kind]}
                                for kind, n in kinds.most_common()}}
    if ok:
        found.update(p50_ms=round(percentile(ok, 50) * 1000, 1),
                     p95_ms=round(percentile(ok, 95) * 1000, 1),
                     max_ms=round(max(took for _, took, _ in requests) * 1000, 1))
    if seconds:
        found["per_second"] = round(len(requests) / seconds, 1)
    return found


def error_kind(problem: str) -> str:
    """"HTTP 503", "TimeoutError", "malformed JSON"...: what errors are grouped by."""
    return problem.split(":", 1)[0]


# -- question clients ---------------------------------------------------------------

@dataclass
class Answer:
    """One POST /api/ask as its client saw it; times in seconds from sending it."""
    question: str
    outcome: str = "failed"  # completed, queued-then-completed, refused, hung up, failed
    detail: str = ""  # why refused or failed
    status: int | None = None
    retry_after: str | None = None
    queued: list = field(default_factory=list)  # queue positions, as announced
    sources: int | None = None
    tokens: int = 0
    ttft: float | None = None
    total: float | None = None
    done: dict | None = None
    sent_at: float = 0.0  # perf_counter when sent
    hung_up_at: float | None = None  # perf_counter when this client hung up


def ask(port: int, question: str, hang_up: bool = False) -> Answer:
    """Ask one question and read its event stream to the end (or hang up at the first token)."""
    found = Answer(question)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=READ_TIMEOUT)
    found.sent_at = time.perf_counter()
    deadline = found.sent_at + ASK_TIMEOUT
    try:
        conn.request("POST", "/api/ask", json.dumps({"question": question}),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        found.status = response.status
        if response.status != 200:
            refusal(found, response)
            return found
        for kind, data in read_events(response, deadline):
            now = time.perf_counter() - found.sent_at
            if kind == "queued":
                found.queued.append(data.get("position"))
            elif kind == "sources":
                found.sources = len(data.get("sources", []))
            elif kind == "token":
                found.tokens += 1
                if found.ttft is None:
                    found.ttft = now
                    if hang_up:
                        hang_up_on(conn)
                        found.hung_up_at = time.perf_counter()
                        found.outcome = "hung up"
                        return found
            elif kind == "error":
                found.detail = f"HTTP 200, error event: {data.get('message', data)}"
            elif kind == "done":
                found.done = data
        found.total = time.perf_counter() - found.sent_at
        if found.done is not None and not found.detail:
            found.outcome = "queued-then-completed" if found.queued else "completed"
        elif not found.detail:
            found.detail = f"stream ended without a done event after {found.tokens} tokens"
    except TimeoutError as error:
        found.detail = f"timeout: {error}"
    except (OSError, http.client.HTTPException, ValueError) as error:
        found.detail = f"{type(error).__name__}: {error}"
    finally:
        if found.total is None and found.hung_up_at is None:
            found.total = time.perf_counter() - found.sent_at
        conn.close()
    return found


def refusal(found: Answer, response) -> None:
    """Classify a non-200 answer: a 429 with Retry-After and a JSON error is a clear refusal."""
    body = response.read()
    found.retry_after = response.getheader("Retry-After")
    found.total = time.perf_counter() - found.sent_at
    try:
        message = json.loads(body).get("error")
    except (ValueError, AttributeError):
        message = None
    if response.status == 429 and found.retry_after and isinstance(message, str):
        found.outcome, found.detail = "refused", message
    else:
        found.detail = (f"HTTP {response.status}, Retry-After {found.retry_after!r}: "
                        f"{body[:200].decode('utf-8', 'replace')}")


def read_events(response, deadline: float):
    """(event, JSON data) of a text/event-stream until it ends; TimeoutError past `deadline`."""
    kind, data = "message", []
    while True:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"the answer had not ended after {ASK_TIMEOUT:.0f} s")
        line = response.readline()
        if not line:
            return
        line = line.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield kind, json.loads("\n".join(data))
            kind, data = "message", []
        elif line.startswith("event:"):
            kind = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").removeprefix(" "))


def hang_up_on(conn: http.client.HTTPConnection) -> None:
    """Drop the connection mid-stream, as a closed tab or a killed client does."""
    # shutdown() acts at once, whatever else still holds the socket (the response's file).
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()


def ask_at_once(port: int, questions: list[str], hang_up: list[bool] | None = None,
                stagger: float = 0.0) -> list[Answer]:
    """Ask the questions from one thread each, started together (or `stagger` s apart)."""
    hang_up = hang_up or [False] * len(questions)
    answers: list[Answer | None] = [None] * len(questions)
    barrier = threading.Barrier(len(questions))

    def client(i: int) -> None:
        barrier.wait()
        time.sleep(i * stagger)
        answers[i] = ask(port, questions[i], hang_up[i])

    threads = [threading.Thread(target=client, args=(i,), daemon=True)
               for i in range(len(questions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(ASK_TIMEOUT + READ_TIMEOUT + 10)
    return [a or Answer(q, detail="client thread still running after its time limit")
            for a, q in zip(answers, questions)]


def answer_table(answers: list[dict]) -> str:
    """One row per question client, with the order in which the model served them."""
    found = [_answer(a) for a in answers]
    # Clients started together: the order of first tokens is the order they got the model.
    served = sorted((i for i, a in enumerate(found) if a.ttft is not None),
                    key=lambda i: found[i].ttft + found[i].sent_at)
    rows = []
    for i, a in enumerate(found):
        queued = ", ".join(map(str, a.queued[:1])) + (
            f" … {a.queued[-1]} ({len(a.queued)} events)" if len(a.queued) > 1 else "")
        rate = (a.done or {}).get("tokens_per_s")
        rows.append([i + 1, a.question, a.outcome, queued or "–",
                     served.index(i) + 1 if i in served else "–", _s(a.ttft), _s(a.total),
                     a.tokens, "–" if rate is None else rate, a.detail[:160] or "–"])
    return table(["client", "question", "outcome", "queue position (first … last)", "served",
                  "first token s", "total s", "tokens", "tokens/s (done)", "detail"], rows)


# -- the server ---------------------------------------------------------------------

def notable_log_lines(server: Server) -> list[str]:
    """Log lines other than gunicorn's INFO lines: warnings, errors, tracebacks."""
    return [line for line in server.log.read_text(errors="replace").splitlines()
            if line.strip() and "] [INFO] " not in line]


def server_settings(env: dict[str, str]) -> dict:
    """The settings this test depends on, as the server reads them from its environment."""
    from ragserver.config import load_settings, setting_fields

    settings = load_settings({**os.environ, **env})
    variables = {name: variable for name, variable, _, _ in setting_fields()}
    return {variables[n]: getattr(settings, n) for n in REPORTED_SETTINGS if n in variables}


def start(name: str, env: dict[str, str]) -> Server:
    """A Server on the corpus database, its log kept as WORK/load-NAME.log."""
    return Server(corpus_db(), env, log=WORK / f"load-{name}.log")


class Worker:
    """The gunicorn worker's peak RSS and CPU time while the block runs."""

    def __init__(self, server: Server):
        self.process = server.worker()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(RSS_EVERY):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> "Worker":
        self.rss_before = self.process.memory_info().rss
        self.peak = self.rss_before
        self.cpu_before = sum(self.process.cpu_times()[:2])
        self.client_cpu_before = time.process_time()
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.wall = time.perf_counter() - self.started
        self.cpu = sum(self.process.cpu_times()[:2]) - self.cpu_before
        self.client_cpu = time.process_time() - self.client_cpu_before
        self.rss_after = self.process.memory_info().rss

    def numbers(self) -> dict:
        """MB and CPU seconds, for the results."""
        return {"rss_before_mb": round(self.rss_before / MB), "rss_peak_mb": round(self.peak / MB),
                "rss_after_mb": round(self.rss_after / MB), "worker_cpu_s": round(self.cpu, 1),
                "client_cpu_s": round(self.client_cpu, 1), "wall_s": round(self.wall, 1)}


def wait_until_free(server: Server, since: float) -> dict:
    """Poll /healthz until the model is not busy: seconds from `since`, and what it said."""
    polls = 0
    while True:
        polls += 1
        try:
            llm = server.health().get("llm", {})
        except (OSError, http.client.HTTPException, ValueError) as error:
            llm = {"error": f"{type(error).__name__}: {error}"}
        now = time.perf_counter()
        if llm.get("busy") is False:
            return {"free_s": round(now - since, 2), "polls": polls, "llm": llm}
        if now - since > FREE_LIMIT:
            return {"free_s": None, "polls": polls, "llm": llm}
        time.sleep(POLL)


# -- phases -------------------------------------------------------------------------

def warm_up(server: Server) -> dict:
    """Load both models (first search, first answer) so that no phase times the loading."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    started = time.perf_counter()
    conn.request("GET", "/api/search?" + urllib.parse.urlencode({"q": "warm up"}))
    conn.getresponse().read()
    conn.close()
    searched = time.perf_counter()
    answered = ask(server.port, WARM_UP)
    return {"first_search_s": round(searched - started, 2),
            "first_answer": summary(answered)}


def search_phase(server: Server, feed: Feed, plan: Plan) -> dict:
    """plan.searchers clients for plan.search_seconds: errors, throughput, latency, memory."""
    with Worker(server) as worker, Searchers(server.port, feed, plan.searchers) as searchers:
        time.sleep(plan.search_seconds)
        searchers.stop()
    window = [r for r in searchers.log.requests
              if r[0] + r[1] <= searchers.started + plan.search_seconds]
    found = summarize_searches(searchers.log.requests)
    found.update(clients=plan.searchers, seconds=plan.search_seconds,
                 completed_in_window=len(window),
                 per_second=round(len(window) / plan.search_seconds, 1),
                 hung_clients=searchers.hung, worker=worker.numbers(),
                 distinct_texts=len(feed.texts))
    return found


def chat_phase(server: Server, plan: Plan) -> dict:
    """plan.askers questions at once, each stream read to its end."""
    answers = ask_at_once(server.port, QUESTIONS[:plan.askers])
    return {"answers": [summary(a) for a in answers], "outcomes": outcomes(answers),
            "health_after": wait_until_free(server, time.perf_counter())}


def combined_phase(server: Server, feed: Feed, plan: Plan) -> dict:
    """The searchers again; after plan.combined_lead s the askers too, until they are done."""
    with Worker(server) as worker, Searchers(server.port, feed, plan.searchers) as searchers:
        time.sleep(plan.combined_lead)
        asked = time.perf_counter()
        answers = ask_at_once(server.port, COMBINED_QUESTIONS[:plan.askers])
        answered = time.perf_counter()
        searchers.stop()
    generating = [(a.sent_at + a.ttft, a.sent_at + a.total) for a in answers
                  if a.ttft is not None and a.total is not None]
    requests = searchers.log.requests
    during = [r for r in requests if any(low <= r[0] < high for low, high in generating)]
    return {
        "clients": plan.searchers, "askers": plan.askers, "worker": worker.numbers(),
        "hung_clients": searchers.hung,
        "searches_before_questions": summarize_searches(
            searchers.log.between(searchers.started, asked), asked - searchers.started),
        "searches_while_questions": summarize_searches(
            searchers.log.between(asked, answered), answered - asked),
        "searches_during_generation": summarize_searches(during),
        "searches_all": summarize_searches(requests),
        "questions_seconds": round(answered - asked, 1),
        "answers": [summary(a) for a in answers], "outcomes": outcomes(answers),
    }


def disconnect_phase(server: Server) -> dict:
    """One hang-up on its own, then 3 hang-ups with 1 more question waiting its turn."""
    baseline = ask(server.port, HANG_UP)
    gone = ask(server.port, HANG_UP, hang_up=True)
    freed = (wait_until_free(server, gone.hung_up_at) if gone.hung_up_at
             else {"free_s": None, "note": "the client never got a token to hang up at"})
    following = ask(server.port, NEXT)
    single = {"baseline": summary(baseline), "hung_up": summary(gone), "freed": freed,
              "next": summary(following),
              "hang_up_to_next_first_token_s": (
                  round(following.sent_at + following.ttft - gone.hung_up_at, 2)
                  if gone.hung_up_at and following.ttft is not None else None)}

    # Staggered so that the hang-up clients are likely ahead of the one that waits.
    answers = ask_at_once(server.port, QUEUE_TEST, hang_up=[True, True, True, False],
                          stagger=0.2)
    last = max((a.hung_up_at or a.sent_at + (a.total or 0)) for a in answers)
    queue = {"answers": [summary(a) for a in answers], "outcomes": outcomes(answers),
             "handoffs_s": handoffs(answers), "freed": wait_until_free(server, last)}
    return {"single": single, "queue": queue}


def handoffs(answers: list[Answer]) -> list[float]:
    """Seconds from each hang-up until the next question's first token (in model order)."""
    turns = sorted((a for a in answers if a.ttft is not None), key=lambda a: a.sent_at + a.ttft)
    gaps = []
    for before, after in zip(turns, turns[1:]):
        if before.hung_up_at is not None:
            gaps.append(round(after.sent_at + after.ttft - before.hung_up_at, 2))
    return gaps


def summary(a: Answer) -> dict:
    """An Answer for the results file (sent_at, hung_up_at: perf_counter moments of this run)."""
    found = asdict(a)
    for key in ("ttft", "total"):
        found[key] = None if found[key] is None else round(found[key], 3)
    return found


def outcomes(answers: list[Answer]) -> dict[str, int]:
    """How many clients ended each way."""
    return dict(Counter(a.outcome for a in answers))


# -- the run ------------------------------------------------------------------------

def run(quick: bool) -> Section:
    """Every phase; writes bench/load_results.json and docs/reliability.md."""
    plan = QUICK if quick else FULL
    started = time.perf_counter()
    facts = machine()
    load_before = os.getloadavg()[0]
    feed = Feed(search_texts(corpus_db()))
    data = {"command": command_line(), "machine": facts, "quick": quick, "plan": asdict(plan),
            "gunicorn": gunicorn_flags(), "timeouts_s": {
                "search": SEARCH_TIMEOUT, "ask": ASK_TIMEOUT, "read": READ_TIMEOUT},
            "free_goal_s": FREE_GOAL}
    with start("short-answers", SHORT_ANSWERS) as server:
        data["short_answers"] = {"env": SHORT_ANSWERS, "settings": server_settings(SHORT_ANSWERS),
                                 "warm_up": warm_up(server),
                                 "health": server.health()}
        print("== search", file=sys.stderr, flush=True)
        data["search"] = search_phase(server, feed, plan)
        print("== chat", file=sys.stderr, flush=True)
        data["chat"] = chat_phase(server, plan)
        print("== combined", file=sys.stderr, flush=True)
        data["combined"] = combined_phase(server, feed, plan)
    data["short_answers"].update(log=notable_log_lines(server),
                                 stop_s=round(server.stop_seconds, 1))
    print("== disconnect", file=sys.stderr, flush=True)
    with start("long-answers", LONG_ANSWERS) as server:
        data["long_answers"] = {"env": LONG_ANSWERS, "settings": server_settings(LONG_ANSWERS),
                                "warm_up": warm_up(server)}
        data["disconnect"] = disconnect_phase(server)
    data["long_answers"].update(log=notable_log_lines(server),
                                stop_s=round(server.stop_seconds, 1))
    data["load_average"] = [load_before, os.getloadavg()[0]]
    data["seconds"] = round(time.perf_counter() - started)
    data["goals"] = goals(data)
    markdown = render(data)
    RESULTS.write_text(json.dumps(data, indent=1) + "\n")
    write_doc(markdown)
    return Section("Load test", markdown, data)


def goals(data: dict) -> list[dict]:
    """Each phase's goal, what was measured against it, and whether it was met."""
    search, chat, combined = data["search"], data["chat"], data["combined"]
    single, queue = data["disconnect"]["single"], data["disconnect"]["queue"]
    free = single["freed"]["free_s"]
    queue_free = queue["freed"]["free_s"]
    waiter = queue["answers"][-1]
    hung_up = sum(a["outcome"] == "hung up" for a in queue["answers"][:-1])
    return [
        {"phase": "search", "goal": "zero errors",
         "measured": f"{search['errors']} errors in {search['requests']:,} requests",
         "met": search["errors"] == 0 and search["hung_clients"] == 0},
        {"phase": "chat", "goal": "zero failed",
         "measured": _outcome_text(chat["outcomes"]),
         "met": chat["outcomes"].get("failed", 0) == 0},
        {"phase": "disconnect, one client",
         "goal": f"model free within {FREE_GOAL:.0f} s of the hang-up",
         "measured": (f"free after {free} s" if free is not None else
                      f"still busy after {FREE_LIMIT:.0f} s"),
         "met": free is not None and free <= FREE_GOAL},
        {"phase": "disconnect, 3 hang up + 1 waits",
         "goal": (f"the 3 get a token and hang up, the 4th completes, model free within "
                  f"{FREE_GOAL:.0f} s of the last client"),
         "measured": (f"{hung_up} of 3 hung up at a token; the 4th: {waiter['outcome']}; "
                      + (f"free after {queue_free} s" if queue_free is not None
                         else f"still busy after {FREE_LIMIT:.0f} s")),
         "met": (hung_up == 3 and waiter["outcome"].endswith("completed")
                 and queue_free is not None and queue_free <= FREE_GOAL)},
        {"phase": "combined", "goal": "zero search errors (and zero failed questions)",
         "measured": (f"{combined['searches_all']['errors']} errors in "
                      f"{combined['searches_all']['requests']:,} searches; questions: "
                      + _outcome_text(combined["outcomes"])),
         "met": (combined["searches_all"]["errors"] == 0 and combined["hung_clients"] == 0
                 and combined["outcomes"].get("failed", 0) == 0)},
    ]


def _outcome_text(counts: dict[str, int]) -> str:
    order = ["completed", "queued-then-completed", "refused", "failed"]
    return ", ".join(f"{counts.get(k, 0)} {k}" for k in order)


# -- the report ---------------------------------------------------------------------

def render(data: dict) -> str:
    """The Markdown report: machine, command, settings, goals, then each phase."""
    facts, plan = data["machine"], data["plan"]
    search, chat, combined = data["search"], data["chat"], data["combined"]
    single, queue = data["disconnect"]["single"], data["disconnect"]["queue"]
    health = data["short_answers"]["health"]
    worker = search["worker"]
    lines = [
        f"<sub>`{data['command']}`, {facts['date']}, {facts['cores']} cores ({facts['cpu']}), "
        f"{facts['memory_gb']} GB, Python {facts['python']}: {data['seconds']} s"
        + (" (quick mode)" if data["quick"] else "") + "</sub>",
        "",
        f"gunicorn started from the Procfile (`{data['gunicorn']}`) on 127.0.0.1 with the "
        f"shared corpus ({health.get('posts')} posts, {health.get('passages'):,} passages). "
        "Every client runs on this machine too. Load average (1 min): "
        f"{data['load_average'][0]:.1f} before, {data['load_average'][1]:.1f} after.",
        "",
        f"- Server for search, chat and combined: {_env(data['short_answers']['env'])} set; "
        f"as the server reads its settings: {_env(data['short_answers']['settings'])}.",
        f"- Server for disconnect: {_env(data['long_answers']['env'])} set; as the server "
        f"reads its settings: {_env(data['long_answers']['settings'])}.",
        "- Every other setting at its default. The per-client rate limits are off because "
        "every client shares 127.0.0.1.",
        f"- Client timeouts: {SEARCH_TIMEOUT:.0f} s per search; {ASK_TIMEOUT:.0f} s per "
        f"question (queue included), {READ_TIMEOUT:.0f} s of silence on its stream.",
        "- Both models were loaded before any phase (one search, one question).",
        "",
        table(["phase", "goal", "measured", "met"],
              [[g["phase"], g["goal"], g["measured"], "**yes**" if g["met"] else "**no**"]
               for g in data["goals"]]),
        "",
        "### Search",
        "",
        f"{search['clients']} clients, each on its own keep-alive connection, sent "
        f"`GET /api/search?q=...` (hybrid) back to back for {search['seconds']:.0f} s. Queries: "
        f"{search['distinct_texts']:,} distinct texts from the corpus (titles in four letter "
        "cases, headings, first six words of passages), shuffled and handed out in turn, so "
        "the server's query cache (512 texts) rarely holds one.",
        "",
        table(["requests", "errors", "completed per s", "p50 ms", "p95 ms", "max ms"],
              [[f"{search['requests']:,}", search["errors"], search["per_second"],
                search.get("p50_ms", "–"), search.get("p95_ms", "–"),
                search.get("max_ms", "–")]]),
        "",
        f"Latency is client-timed, over successful requests (max over all). Gunicorn worker "
        f"RSS: {worker['rss_before_mb']} MB before, {worker['rss_peak_mb']} MB at peak, "
        f"{worker['rss_after_mb']} MB after. CPU: the worker {worker['worker_cpu_s']} s, "
        f"the client process {worker['client_cpu_s']} s, over {worker['wall_s']} s.",
        *_errors(search),
        "",
        "### Chat",
        "",
        f"{len(chat['answers'])} clients sent `POST /api/ask` at the same moment (a barrier) "
        "and read the event stream to its end; times are from sending the request. "
        "\"served\" is the order in which they got the model (by first token).",
        "",
        answer_table(chat["answers"]),
        "",
        f"Afterwards /healthz: busy {chat['health_after']['llm'].get('busy')}, waiting "
        f"{chat['health_after']['llm'].get('waiting')}.",
        "",
        "### Disconnect",
        "",
        f"With answers of up to {LONG_ANSWERS['RAGSERVER_MAX_ANSWER_TOKENS']} tokens. The "
        f"question \"{HANG_UP}\" was first answered in full: "
        f"{_answer_text(single['baseline'])}. Then asked again (llama.cpp still holds its "
        "prompt) by a client that shut its socket down at the first `token` event; "
        "/healthz was polled every "
        f"{POLL * 1000:.0f} ms from that moment, and once the model was free a next "
        "question was sent.",
        "",
        table(["measured", "seconds"], [
            ["hang-up client: request to first token", _s(single["hung_up"]["ttft"])],
            ["hang-up to /healthz `llm.busy` false", _s(single["freed"]["free_s"])],
            ["next question: request to first token", _s(single["next"]["ttft"])],
            ["hang-up to the next question's first token",
             _s(single["hang_up_to_next_first_token_s"])],
            ["the full answer, first token to end (for comparison)",
             _s(_generating(single["baseline"]))],
        ]),
        "",
        f"Next question: {_answer_text(single['next'])}.",
        "",
        "Then 3 clients that hang up at their first token and 1 that reads to the end, sent "
        "0.2 s apart:",
        "",
        answer_table(queue["answers"]),
        "",
        "Each hang-up to the next client's first token, in the order the model served them: "
        + (", ".join(f"{s} s" for s in queue["handoffs_s"]) or "none measured")
        + ". From the last client's end (hang-up or done) to /healthz `llm.busy` false: "
        + (f"{queue['freed']['free_s']} s" if queue["freed"]["free_s"] is not None
           else f"still busy after {FREE_LIMIT:.0f} s") + ".",
        "",
        "### Combined",
        "",
        f"{combined['clients']} search clients as above; after {plan['combined_lead']:.0f} s, "
        f"{combined['askers']} question clients as in the chat phase, with other questions "
        f"(questions took {combined['questions_seconds']} s); the searchers stopped once "
        "every question had ended.",
        "",
        table(["searches started", "requests", "errors", "p50 ms", "p95 ms", "max ms"], [
            [name, f"{s['requests']:,}", s["errors"], s.get("p50_ms", "–"),
             s.get("p95_ms", "–"), s.get("max_ms", "–")]
            for name, s in [("before the questions", combined["searches_before_questions"]),
                            ("while questions were queued or answered",
                             combined["searches_while_questions"]),
                            ("while tokens were being generated",
                             combined["searches_during_generation"])]]),
        "",
        answer_table(combined["answers"]),
        "",
        f"Worker RSS peak {combined['worker']['rss_peak_mb']} MB; CPU: the worker "
        f"{combined['worker']['worker_cpu_s']} s, the client process "
        f"{combined['worker']['client_cpu_s']} s, over {combined['worker']['wall_s']} s.",
        *_errors(combined["searches_all"]),
        "",
        "### Server log",
        "",
        *_log("search, chat and combined", data["short_answers"]),
        *_log("disconnect", data["long_answers"]),
    ]
    return "\n".join(lines)


def _env(env: dict[str, str]) -> str:
    return ", ".join(f"`{k}={v}`" for k, v in env.items())


def _errors(found: dict) -> list[str]:
    if not found["errors"]:
        return []
    return ["", "Errors by kind (count, first example):", ""] + [
        f"- {kind}: {e['count']} (`{e['example']}`)" for kind, e in found["errors_by_kind"].items()]


def _log(name: str, server: dict) -> list[str]:
    head = (f"The {name} server stopped {server['stop_s']} s after SIGTERM and logged "
            f"{len(server['log'])} line(s) besides gunicorn's INFO lines")
    if not server["log"]:
        return [head + ".", ""]
    shown = server["log"][:20]
    return [head + (":" if len(shown) == len(server["log"]) else f" (first {len(shown)}):"),
            "", "```", *shown, "```", ""]


def _answer(found: dict) -> Answer:
    fields = {k: v for k, v in found.items() if k in Answer.__dataclass_fields__}
    return Answer(**fields)


def _answer_text(found: dict) -> str:
    return (f"{found['outcome']}, first token after {_s(found['ttft'])} s, "
            f"{found['tokens']} tokens in {_s(found['total'])} s")


def _generating(found: dict) -> float | None:
    if found["ttft"] is None or found["total"] is None:
        return None
    return found["total"] - found["ttft"]


def _s(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds:.2f}"


def write_doc(markdown: str) -> None:
    """Replace what is between the load-test markers in docs/reliability.md."""
    text = DOC.read_text() if DOC.exists() else f"# Reliability\n\n{START}\n{END}\n"
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    DOC.write_text(f"{before}{START}\n## Load test\n\n{markdown}\n{END}{after}")


def command_line() -> str:
    """This run's command as typed from the repository root."""
    python = sys.executable
    home = str(Path.home())
    if python.startswith(home + os.sep):
        python = "~" + python[len(home):]
    script = Path(sys.argv[0]).resolve()
    if script.is_relative_to(ROOT):
        script = script.relative_to(ROOT)
    return " ".join([python, shlex.join([str(script), *sys.argv[1:]])])


def gunicorn_flags() -> str:
    """The Procfile's worker flags, as run."""
    args = procfile_command(0)
    wanted = ("--worker-class", "--workers", "--threads", "--timeout")
    return " ".join(f"{a} {args[i + 1]}" for i, a in enumerate(args) if a in wanted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK.searchers} searchers for {QUICK.search_seconds:.0f} s "
                             f"and {QUICK.askers} questions, to check the test itself")
    section = run(parser.parse_args().quick)
    print(section.markdown)
    print(f"\nwrote {RESULTS.relative_to(ROOT)} and {DOC.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
