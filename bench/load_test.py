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
load-test markers, and prints the Markdown report. The plan, the clients, the summaries
and the report are in load_plan.py, load_clients.py, load_summary.py and load_report.py.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import sys
import threading
import time
import urllib.parse
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from common import ROOT, Section, machine  # noqa: E402
from corpus import WORK, corpus_db  # noqa: E402
from load_clients import Feed, Searchers, ask, ask_at_once, search_texts  # noqa: E402
from load_plan import (ASK_TIMEOUT, COMBINED_QUESTIONS, FREE_GOAL, FREE_LIMIT, FULL,  # noqa: E402
                       HANG_UP, LONG_ANSWERS, MB, NEXT, POLL, QUESTIONS, QUEUE_TEST, QUICK,
                       READ_TIMEOUT, REPORTED_SETTINGS, RSS_EVERY, SEARCH_TIMEOUT,
                       SHORT_ANSWERS, WARM_UP, Plan)
from load_report import DOC, render, write_doc  # noqa: E402
from load_summary import goals, handoffs, outcomes, summarize_searches, summary  # noqa: E402
from tests.server import Server, procfile_command  # noqa: E402

RESULTS = HERE / "load_results.json"


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
