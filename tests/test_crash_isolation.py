"""A crash of the answer model costs one answer: never a search, never the web worker.

gunicorn from the Procfile, the real SmolLM2 in its own process, real signals.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import urllib.parse
import urllib.request

import psutil

from conftest import running_server

QUESTION = "How do I enable WAL mode for a SQLite database?"
SEARCHES = ["sqlite wal", "python virtual environment", "uv run script", "json in sqlite"]


def server_processes(url: str) -> tuple[psutil.Process, psutil.Process | None]:
    """(gunicorn worker, its model process or None) of the server at `url`."""
    bind = url.removeprefix("http://")
    master = next(p for p in psutil.process_iter(["cmdline"])
                  if "gunicorn" in " ".join(p.info["cmdline"] or []) and bind in p.info["cmdline"])
    worker = master.children()[0]
    models = [p for p in worker.children() if "ragserver.model_process" in " ".join(p.cmdline())]
    return worker, (models[0] if models else None)


def ask(url: str, on_token=None, tokens_before_callback: int = 3) -> list[tuple[str, dict]]:
    """POST /api/ask, read to the end; `on_token` is called once after a few tokens."""
    request = urllib.request.Request(f"{url}/api/ask", data=json.dumps({"question": QUESTION}).encode(),
                                     headers={"Content-Type": "application/json"})
    events, kind, tokens = [], None, 0
    with urllib.request.urlopen(request, timeout=300) as response:
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((kind, json.loads(line.removeprefix("data: "))))
                if kind == "token":
                    tokens += 1
                    if on_token and tokens == tokens_before_callback:
                        on_token()
    return events


class Searcher(threading.Thread):
    """Searches without pause until stopped; records every status and failure."""

    def __init__(self, url: str, n: int):
        super().__init__(daemon=True)
        self.url, self.n = url, n
        self.stop = threading.Event()
        self.ok, self.failures = 0, []

    def run(self):
        i = 0
        while not self.stop.is_set():
            query = SEARCHES[(i + self.n) % len(SEARCHES)] + f" {i % 7}"
            i += 1
            try:
                url = f"{self.url}/api/search?" + urllib.parse.urlencode({"q": query})
                with urllib.request.urlopen(url, timeout=60) as response:
                    results = json.load(response)["results"]
                    assert response.status == 200 and results
                self.ok += 1
            except Exception as error:  # noqa: BLE001 - every failure is the finding
                self.failures.append(repr(error))


def test_model_crashes_cost_one_answer_never_a_search(seeded_db, tmp_path):
    env = {"RAGSERVER_MAX_ANSWER_TOKENS": "300"}
    with running_server(seeded_db, tmp_path / "server.log", env) as url:
        warm = ask(url)
        assert warm[-1][0] == "done" and warm[-1][1]["answered"]
        worker, model = server_processes(url)
        assert model is not None
        searchers = [Searcher(url, n) for n in range(3)]
        for s in searchers:
            s.start()
        try:
            for sig in (signal.SIGKILL, signal.SIGSEGV):
                _, model = server_processes(url)
                events = ask(url, on_token=lambda: os.kill(model.pid, sig))
                kinds = [kind for kind, _ in events]
                assert kinds.count("token") >= 3 and kinds[-1] == "error", kinds
                message = events[-1][1]["message"]
                assert f"was killed by {sig.name}" in message and "while answering" in message
                # The next question is answered by a new model process.
                events = ask(url)
                assert events[-1][0] == "done" and events[-1][1]["tokens"] > 0, events[-1]
                _, replaced = server_processes(url)
                assert replaced is not None and replaced.pid != model.pid
        finally:
            for s in searchers:
                s.stop.set()
            for s in searchers:
                s.join(timeout=60)
        assert server_processes(url)[0].pid == worker.pid  # the same web worker throughout
        assert sum(s.ok for s in searchers) > 10
        assert [f for s in searchers for f in s.failures] == []
        health = json.load(urllib.request.urlopen(f"{url}/healthz", timeout=30))
        assert health["llm"]["process"] == "running" and health["llm"]["restarts"] == 2
        assert "SIGSEGV" in health["llm"]["last_failure"]


def test_the_chat_page_shows_a_model_crash_as_an_error(seeded_db, tmp_path):
    env = {"RAGSERVER_MAX_ANSWER_TOKENS": "300"}
    with running_server(seeded_db, tmp_path / "server.log", env) as url:
        body = urllib.parse.urlencode({"question": QUESTION, "c": "crash"}).encode()
        turn = urllib.request.urlopen(urllib.request.Request(
            f"{url}/chat", data=body, headers={"HX-Request": "true"}), timeout=60).read().decode()
        stream_path = turn.split('sse-connect="')[1].split('"')[0]
        seen, tokens = "", 0
        with urllib.request.urlopen(f"{url}{stream_path}", timeout=300) as response:
            for raw in response:
                line = raw.decode()
                seen += line
                if line.startswith("event: token"):
                    tokens += 1
                    if tokens == 3:
                        os.kill(server_processes(url)[1].pid, signal.SIGSEGV)
        assert 'class="error"' in seen and "SIGSEGV" in seen and "event: end" in seen
        assert seen.index('class="error"') > seen.index("event: token")
        # The page still works, and so does the model: the next question starts a new one.
        again = json.load(urllib.request.urlopen(f"{url}/api/search?q=sqlite", timeout=60))
        assert again["results"]
        events = ask(url)
        assert events[-1][0] == "done" and events[-1][1]["tokens"] > 0
