"""Serving: answers and searches beside a busy neighbour, and the memory of the server.

Every figure comes from a gunicorn started from the Procfile (one gthread worker, eight
threads, the answer model in its own process), timed or sampled by a client in this
process. "A busy neighbour" is a process spinning on one of the two cores, as the cron
ingest, a search or anything else on a small server would (bench/common.py).

Answers. `POST /api/ask` with two questions about the sqlite posts, taken in turn so the
model never finds the previous prompt in its cache, on an otherwise idle machine and
beside a busy neighbour, interleaved over the repeats: time to first token as the client
sees it (request sent to first token event, retrieval included) and tokens/s after the
first (the server's done event). Goals (issue 10): beside the neighbour, tokens/s at
least 0.8x idle and time to first token at most 1.5x idle. Then the same with the model
on two threads, llama-cpp-python's default on two cores, for comparison.

Contention. The server holds the sqlite and python topics of the shared corpus (ingested
once, kept in /tmp/ragserver-bench/). Client-timed p50 / p95 of `GET /api/search`
(hybrid, post titles new to the query cache, one started every 0.25 s) while no answer
is being generated, then while a client thread keeps the chat busy: `POST /api/ask` "How
do I enable WAL mode for a SQLite database?" with the default answer length, each stream
read to its end and the question asked again at once; then again beside a busy
neighbour. The report says how many busy searches were sent while tokens were generating
rather than during retrieval and prompt processing.

Memory. RSS (psutil) of the worker, the master's child, and of the model process, the
worker's child: after start (`/healthz` answered), after the first search (embedding
model loaded), after the first answer (model process started), then after bursts of 1,
4 and 8 searches sent at once (the worker's threads share at most two read connections,
and sqlite-vss loads its own copy of the index into each; the worker's connections to the
database are counted from its open files). On the small database and on bench_search's
20,000-passage (quick) or 200,000-passage (full) one; min / median / max over 1 (quick)
or 3 server starts.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.request
from pathlib import Path

from common import (COMPARE_HEADERS, CORPUS, LATENCY_HEADERS, MODEL, Figure, Section, compare,
                    latency_row, neighbour, table)
from corpus import CASES, WORK, grown_db, pick_queries
from tests.server import Server

TOPICS = ["sqlite", "python"]
QUESTION = "How do I enable WAL mode for a SQLite database?"
OTHER = "How do I compile SQLite on Ubuntu?"  # asked in turn with QUESTION: no cached prompt
PACE = 0.25  # seconds between the starts of two searches
BURSTS = (1, 4, 8)
MB = 2**20


def serving_db() -> Path:
    """The sqlite and python topics of the corpus, ingested once by the real pipeline."""
    path = WORK / "serving.db"
    if path.exists():
        return path
    from ragserver.ingest.pipeline import Ingester
    from ragserver.ingest.sources import open_source
    from ragserver.storage import open_storage
    from ragserver.embedder import SentenceTransformerEmbedder

    posts = WORK / "serving-posts"
    shutil.rmtree(posts, ignore_errors=True)
    for topic in TOPICS:
        shutil.copytree(CORPUS / topic, posts / topic)
    partial = WORK / "serving.db.partial"
    partial.unlink(missing_ok=True)
    conn = open_storage(partial, create=True)  # before the model: torch before sqlite-vss
    embedder = SentenceTransformerEmbedder(MODEL, "", "")
    Ingester(conn, embedder).run([open_source(str(posts), base_url="https://til.example/")])
    conn.close()
    partial.rename(path)
    return path


def ask(url: str, stop: threading.Event | None = None, question: str = QUESTION) -> dict:
    """Stream one answer to its end (or until `stop` is set); when it ran."""
    request = urllib.request.Request(
        f"{url}/api/ask", data=json.dumps({"question": question}).encode(),
        headers={"Content-Type": "application/json"})
    started, first, tokens, sources, done = time.perf_counter(), None, 0, 0, {}
    with urllib.request.urlopen(request, timeout=300) as response:
        event = ""
        for raw in response:
            line = raw.decode("utf-8").rstrip("\n")
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
                if event == "token":
                    tokens += 1
                    first = first or time.perf_counter()
            elif event == "sources" and line.startswith("data: "):
                sources = len(json.loads(line.removeprefix("data: "))["sources"])
            elif event == "done" and line.startswith("data: "):
                done = json.loads(line.removeprefix("data: "))
            elif event == "error" and line.startswith("data: "):
                raise RuntimeError(f"answer failed: {line}")
            if stop is not None and stop.is_set():
                break
    return {"started": started, "first": first or time.perf_counter(),
            "end": time.perf_counter(), "tokens": tokens, "sources": sources, "done": done}


class Answering:
    """A client thread that asks again as soon as each answer has streamed, until exit."""

    def __init__(self, url: str):
        self.url = url
        self.answers: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.error: Exception | None = None

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self.answers.append(ask(self.url, self._stop))
        except Exception as error:  # reported by __exit__: a failed answer spoils the figures
            self.error = error

    def __enter__(self) -> "Answering":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=300)
        if self.error is not None and not exc[0]:
            raise RuntimeError(f"an answer failed while measuring: {self.error!r}")

    def phase(self, moment: float) -> str:
        """What the answer was doing then: prompt (retrieval, prompt processing) or generating."""
        for a in self.answers:
            if a["started"] <= moment < a["first"]:
                return "prompt"
            if a["first"] <= moment <= a["end"]:
                return "generating"
        return "between"

    def tokens_per_second(self) -> float:
        """Tokens received per second of generation, over the answers."""
        return (sum(a["tokens"] for a in self.answers)
                / sum(a["end"] - a["first"] for a in self.answers))


def paced(server: Server, texts: list[str]) -> list[tuple[float, float]]:
    """(start, client seconds) of hybrid searches started one every PACE seconds."""
    timings = []
    for text in texts:
        started = time.perf_counter()
        seconds, _ = server.search(text)
        timings.append((started, seconds))
        time.sleep(max(0.0, started + PACE - time.perf_counter()))
    return timings


# -- contention ---------------------------------------------------------------------

def answers_beside(server: Server, repeats: int) -> dict[str, list[dict]]:
    """Answers idle and beside a busy neighbour, interleaved; their TTFT and tokens/s."""
    ask(server.url, question=OTHER)  # starts the model process
    answers: dict[str, list[dict]] = {"idle": [], "busy": []}
    for _ in range(repeats):
        for where in answers:
            with neighbour(where == "busy"):
                for question in (QUESTION, OTHER):
                    answers[where].append(ask(server.url, question=question))
    return {where: [{"ttft": a["first"] - a["started"], "tokens": a["tokens"],
                     "tokens_per_s": a["done"]["tokens_per_s"]} for a in runs]
            for where, runs in answers.items()}


def contention(queries: list[str], repeats: int) -> dict:
    """Answers idle and beside a busy neighbour (with the default threads, then with two);
    then client-timed hybrid searches idle, while answers stream back to back, and while
    they do beside a busy neighbour."""
    with Server(serving_db()) as server:
        server.search("warm up")
        answers = answers_beside(server, repeats)
        idle = [seconds for _, seconds in paced(server, [CASES[1](q) for q in queries])]
        with Answering(server.url) as answering:
            busy = paced(server, [CASES[2](q) for q in queries])
        with neighbour(), Answering(server.url) as crowded:
            beside = paced(server, [CASES[3](q) for q in queries])
    # llama-cpp-python's own default on two cores: both threads, for both phases.
    with Server(serving_db(), {"RAGSERVER_LLM_THREADS": "2",
                               "RAGSERVER_LLM_BATCH_THREADS": "2"}) as server:
        two_threads = answers_beside(server, repeats)
    phases = [answering.phase(started) for started, _ in busy]
    return {"answers": answers, "two_threads": two_threads,
            "idle": idle, "busy": [seconds for _, seconds in busy],
            "beside": [seconds for _, seconds in beside],
            "generating": phases.count("generating") / len(phases),
            "streamed": len(answering.answers), "sources": answering.answers[0]["sources"],
            "tokens_per_s": answering.tokens_per_second(),
            "crowded_tokens_per_s": crowded.tokens_per_second()}


def answer_rows(answers: dict, label: str = "") -> tuple[list[list], float, float]:
    """Table rows for answers beside the neighbour against idle; (rate ratio, TTFT ratio)."""
    def figure(where: str, key: str, name: str, unit: str, scale: float = 1) -> Figure:
        return Figure(name, unit, [a[key] * scale for a in answers[where]])

    rate = figure("busy", "tokens_per_s", f"`POST /api/ask` tokens/s{label}, busy neighbour",
                  "tokens/s")
    rate_idle = figure("idle", "tokens_per_s", "idle", "tokens/s")
    ttft = figure("busy", "ttft", f"time to first token{label}, busy neighbour", "ms", 1000)
    ttft_idle = figure("idle", "ttft", "idle", "ms", 1000)
    return ([compare(rate, rate_idle), compare(ttft, ttft_idle, 0)],
            rate.median / rate_idle.median, ttft.median / ttft_idle.median)


# -- memory -------------------------------------------------------------------------

def memory(db: Path, queries: list[str]) -> dict[str, float]:
    """Worker RSS (MB) at each stage of one server's life, and its connections to `db`."""
    texts = iter([case(q) for case in CASES for q in queries])
    with Server(db, {"RAGSERVER_MAX_ANSWER_TOKENS": "64"}) as server:
        worker = server.worker()
        rss = lambda: worker.memory_info().rss / MB  # noqa: E731
        found = {"start": rss()}
        server.search(next(texts))
        found["search"] = rss()
        ask(server.url)
        found["answer"] = rss()
        model = next(p for p in worker.children() if "model_process" in " ".join(p.cmdline()))
        found["model process"] = model.memory_info().rss / MB
        for n in BURSTS:
            found[f"peak {n}"] = burst(server, worker, [next(texts) for _ in range(n)])
            found[f"after {n}"] = rss()
            found[f"connections {n}"] = sum(f.path == str(db) for f in worker.open_files())
    return found


def burst(server: Server, worker, texts: list[str]) -> float:
    """Send the searches at once; the worker's peak RSS (MB) while they run."""
    barrier = threading.Barrier(len(texts))

    def search(text: str) -> None:
        barrier.wait()
        server.search(text)

    threads = [threading.Thread(target=search, args=(text,)) for text in texts]
    for thread in threads:
        thread.start()
    peak = 0
    while any(thread.is_alive() for thread in threads):
        peak = max(peak, worker.memory_info().rss)
        time.sleep(0.01)
    return peak / MB


# -- the report ---------------------------------------------------------------------

def run(quick: bool) -> Section:
    """Contention on the small database; memory on it and on a grown one."""
    from ragserver.config import load_settings

    queries = pick_queries(20 if quick else 50)
    starts = 1 if quick else 3
    load_before = os.getloadavg()[0]
    found = contention(queries, 2 if quick else 5)
    grown = 20_000 if quick else 200_000
    databases = [(f"{' + '.join(TOPICS)} topics", serving_db()),
                 (f"{grown:,} passages (bench_search)", grown_db(grown))]
    memories = {name: [memory(db, queries) for _ in range(starts)] for name, db in databases}
    rows, rate_ratio, ttft_ratio = answer_rows(found["answers"])
    two_rows, two_rate, two_ttft = answer_rows(found["two_threads"], " with 2 threads")
    threads = load_settings().llm_thread_counts
    runs = len(found["answers"]["idle"])

    parts = [
        f"Load average (1 min) on the machine: {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after these measurements (2 cores; the server and its "
        "client account for about 1, 2 while an answer streams).",
        f"**Answers beside a busy neighbour.** {runs} answers each way, to \"{QUESTION}\" "
        f"and \"{OTHER}\" in turn, idle and beside a process spinning on one core, "
        f"interleaved; the model process uses the default threads ({threads[0]} to "
        f"generate, {threads[1]} to read the prompt: one per two cores, see Threads above).",
        table(COMPARE_HEADERS, rows),
        f"Goals: tokens/s beside the neighbour at least 0.8× idle: "
        f"**{'met' if rate_ratio >= 0.8 else 'not met'}** ({rate_ratio:.2f}×); time to "
        f"first token at most 1.5× idle: **{'met' if ttft_ratio <= 1.5 else 'not met'}** "
        f"({ttft_ratio:.2f}×).",
        "The same with the model on two threads for both phases (llama-cpp-python's own "
        "default on two cores), for comparison:",
        table(COMPARE_HEADERS, two_rows),
        f"With two threads, tokens/s beside the neighbour fall to {two_rate:.2f}× idle and "
        f"time to first token grows to {two_ttft:.2f}× idle.",
        f"**Searches while answering.** {len(queries)} hybrid searches (titles new to the "
        f"query cache), one every {PACE} s, on the {' and '.join(TOPICS)} topics with no "
        f"answer running; then as many while a client asks \"{QUESTION}\" "
        f"({found['sources']} sources, default RAGSERVER_MAX_ANSWER_TOKENS) again as soon as "
        "each answer ends; then as many while it does and a neighbour keeps one core busy.",
        table(LATENCY_HEADERS, [
            latency_row(("hybrid search while answering", found["busy"]),
                        ("hybrid search, idle", found["idle"])),
            latency_row(("while answering, beside a busy neighbour", found["beside"]),
                        ("hybrid search, idle", found["idle"]))]),
        f"{found['generating']:.0%} of the searches while answering were sent while tokens "
        f"were being generated, the rest during retrieval and prompt processing "
        f"({found['streamed']} answers, {found['tokens_per_s']:.0f} tokens/s; beside the "
        f"neighbour {found['crowded_tokens_per_s']:.0f} tokens/s).",
        f"**Memory.** RSS of the gunicorn worker in MB, min / median / max over {starts} "
        "server start(s); the model process's beside it.",
    ]
    for (name, db), found in zip(databases, memories.values()):
        parts += [f"*{name}*", table(COMPARE_HEADERS, memory_rows(found)),
                  memory_line(found, db)]
    data = {"contention": found, "memory": memories}
    return Section("Serving: contention and memory", "\n\n".join(parts), data)


def memory_rows(found: list[dict]) -> list[list]:
    """Each stage beside the stage before it."""
    figure = lambda name, key: Figure(name, "MB", [f[key] for f in found])  # noqa: E731
    start = figure("after start", "start")
    search = figure("after the first search (embedding model, one connection)", "search")
    answer = figure("after the first answer (model process started)", "answer")
    rows = [compare(search, start, 0), compare(answer, search, 0)]
    one = figure("after a burst of 1 search", "after 1")
    rows.append(compare(one, answer, 0))
    for n in BURSTS[1:]:
        rows.append(compare(figure(f"after a burst of {n} searches", f"after {n}"), one, 0))
    rows.append(compare(figure(f"peak during the burst of {BURSTS[-1]}",
                               f"peak {BURSTS[-1]}"), one, 0))
    rows.append(compare(figure("model process, after the first answer", "model process"),
                        answer, 0))
    return rows


def memory_line(found: list[dict], db: Path) -> str:
    """Growth per extra search thread beside the index size, and the connections open."""
    from ragserver.storage import open_storage

    conn = open_storage(db, readonly=True)
    index_mb = conn.get_stats().index_bytes / MB
    conn.close()
    last = BURSTS[-1]
    per_thread = sorted((f[f"after {last}"] - f["after 1"]) / (last - 1) for f in found)
    opened = ", ".join(str(found[0][f"connections {n}"]) for n in BURSTS)
    return (f"Each search of a burst of {last} beyond the first adds "
            f"{per_thread[len(per_thread) // 2]:.0f} MB "
            f"(median over starts; the sqlite-vss index is {index_mb:.0f} MB on disk). "
            f"Connections to the database held by the worker after bursts of "
            f"{', '.join(map(str, BURSTS))}: {opened}.")
