"""What the load test does: how hard each phase pushes, the server's settings, the
client timeouts and goals, and the questions asked."""

from __future__ import annotations

from dataclasses import dataclass


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
