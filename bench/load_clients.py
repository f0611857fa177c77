"""The load test's clients: search clients on keep-alive connections, question clients
that read an answer's event stream (or hang up at its first token), and the queries."""

from __future__ import annotations

import http.client
import itertools
import json
import random
import re
import socket
import sqlite3
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from corpus import CASES
from load_plan import ASK_TIMEOUT, READ_TIMEOUT, SEARCH_TIMEOUT


# -- queries ------------------------------------------------------------------------

def search_texts(db: Path) -> list[str]:
    """Distinct real queries from the corpus: titles in four cases, headings, passage openings."""
    # Plain sqlite3 on the SQLite file: reading posts needs no vector index, and opening
    # the storage would import torch into this client process.
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    posts = conn.execute("SELECT id, title FROM posts ORDER BY source").fetchall()
    texts = [case(title) for _, title in posts for case in CASES]
    for post_id, _ in posts:
        for headings, text in conn.execute("SELECT heading_path, text FROM passages "
                                           "WHERE post_id = ? ORDER BY position", (post_id,)):
            texts += json.loads(headings)
            words = re.findall(r"[A-Za-z][\w'+.-]*", text)
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
