"""Search latency on 20k and 200k passages: ragserver beside a numpy scan and `llm similar`.

Data. The shared corpus, ingested once by the real pipeline, then grown to N passages
with copies of its posts whose vectors carry a little Gaussian noise (bench/corpus.py
says how); built databases are kept in /tmp/ragserver-bench/ and reused.

Queries. Post titles spread over the corpus. In-process, ragserver is called with the
uncached embedder, so every query is embedded. The server caches query vectors by text,
so each mode gets the titles in another letter case (the model is uncased and FTS5 folds
case: same results, new to the cache), and a repeated hybrid search shows the cached case.

Measured, as p50 / p95 over the queries: `retrieve.search_posts` per mode in-process and
its parts (`embed_query`, also with torch on one thread; `storage.search_index` with the
vector given; `storage.search_keyword`), each
query through all of them in turn so that load from elsewhere on the machine falls on
all alike; the same searches as `GET /api/search` of a gunicorn
started from the Procfile, timed by the client; a numpy scan of one float32 matrix
(matrix @ q, argpartition top 100), its load time apart; llm's `Collection.similar`
in-process and the whole `llm similar -c` command, on the same file. Every ratio is to
ragserver's in-process search (the vector one for the baselines).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from common import (COMPARE_HEADERS, LATENCY_HEADERS, MODEL, Figure, Section, compare,
                    format_ms, latency_row, percentile, table, timed)
from corpus import CASES, NOISE, WORK, grown_db, pick_queries
from tests.server import Server

K = 100  # passages search_posts asks for (retrieve.CANDIDATES * 2)
MODES = ("vector", "keyword", "hybrid")
CANDIDATES = 50  # passages each half of a hybrid search takes (retrieve.CANDIDATES)


# -- ragserver in-process --------------------------------------------------------

def in_process(path: Path, queries: list[str]):
    """(seconds by what was timed, query vectors, vss top-K ids per query).

    search_posts per mode and its parts, with the uncached embedder. Everything is
    timed query by query, in turn, so that load from elsewhere on the machine falls on
    all of them alike.
    """
    import torch

    from ragserver.storage import open_storage
    from ragserver.embedder import SentenceTransformerEmbedder
    from ragserver.retrieve import search_posts

    conn = open_storage(path)
    embedder = SentenceTransformerEmbedder(MODEL, "", "")
    for mode in MODES:  # the first vector search loads the index into this connection
        search_posts(conn, embedder, "warm up", mode=mode)
    threads = torch.get_num_threads()
    seconds: dict[str, list[float]] = {}
    vectors, top = [], []
    for q in queries:
        for mode in MODES:
            seconds.setdefault(mode, []).append(
                timed(lambda: search_posts(conn, embedder, q, mode=mode))[0])
        took, vector = timed(lambda: embedder.embed_query(q))
        seconds.setdefault("embed", []).append(took)
        torch.set_num_threads(1)
        seconds.setdefault("embed 1 thread", []).append(timed(lambda: embedder.embed_query(q))[0])
        torch.set_num_threads(threads)
        took, hits = timed(lambda: conn.search_index(vector, K))
        seconds.setdefault("index", []).append(took)
        vectors.append(vector)
        top.append([h.passage_id for h in hits])
        took, words = timed(lambda: conn.search_keyword(q, CANDIDATES))
        seconds.setdefault("fts", []).append(took)
    conn.close()
    return seconds, vectors, top


def first_search(path: Path, vector) -> float:
    """Seconds to open a connection and run its first vector search (loads the index)."""
    from ragserver.storage import open_storage

    def run():
        conn = open_storage(path)
        conn.search_index(vector, K)
        conn.close()
    return timed(run)[0]


# -- baselines ----------------------------------------------------------------------

def load_matrix(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(passage ids, float32 matrix of every stored vector)."""
    from ragserver.storage import open_storage

    conn = open_storage(path, readonly=True)
    ids, blobs = [], []
    for rows in conn.iter_vectors(batch=10_000):
        ids += [pid for pid, _ in rows]
        blobs += [blob for _, blob in rows]
    conn.close()
    return np.array(ids), np.frombuffer(b"".join(blobs), "<f4").reshape(len(ids), -1)


def scan(ids: np.ndarray, matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Passage ids of the K best dot products, best first."""
    scores = matrix @ vector
    best = np.argpartition(scores, -K)[-K:]
    return ids[best[np.argsort(-scores[best])]]


def llm_env() -> dict[str, str]:
    """An llm user folder where the collection's model id names the packaged MiniLM folder.

    The database records `sentence-transformers/all-MiniLM-L6-v2`; the plugin would load
    that from the Hugging Face hub. Registering the packaged folder gives the id
    `sentence-transformers/<folder>`, and an alias maps the recorded id to it, so the
    database is used as it is.
    """
    from ragserver.embedder import packaged_model_path

    folder = WORK / "llm-user"
    folder.mkdir(parents=True, exist_ok=True)
    local = str(packaged_model_path())
    (folder / "sentence-transformers.json").write_text(json.dumps([{"name": local}]))
    (folder / "aliases.json").write_text(json.dumps({MODEL: f"sentence-transformers/{local}"}))
    return {"LLM_USER_PATH": str(folder), "HF_HUB_OFFLINE": "1"}


def llm_similar(path: Path, queries: list[str]) -> list[float]:
    """Seconds per llm.Collection.similar call (embeds, then scores every row in Python)."""
    saved = {key: os.environ.get(key) for key in llm_env()}
    os.environ.update(llm_env())
    try:
        import llm
        from sqlite_utils import Database

        collection = llm.Collection("passages", Database(path), create=False)
        collection.similar("warm up", number=K)  # loads the model
        return [timed(lambda: collection.similar(q, number=K))[0] for q in queries]
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def llm_cli(path: Path, query: str) -> float:
    """Seconds for the whole `llm similar passages -c QUERY -d DB -n K` command."""
    command = [str(Path(sys.executable).parent / "llm"), "similar", "passages", "-c", query,
               "-d", str(path), "-n", str(K)]
    env = {**os.environ, **llm_env()}
    return timed(lambda: subprocess.run(command, env=env, check=True, capture_output=True))[0]


# -- through gunicorn ---------------------------------------------------------------

def through_server(path: Path, queries: list[str]) -> dict[str, list[float]]:
    """Client-timed seconds per GET /api/search, the modes in turn for each query.

    Each mode gets its own letter case of the query, so every text is new to the
    server's query cache except in the repeated hybrid search.
    """
    passes = [("vector", CASES[1]), ("keyword", CASES[2]), ("hybrid", CASES[3]),
              ("hybrid cached", CASES[3])]
    seconds: dict[str, list[float]] = {}
    with Server(path) as server:
        for mode in MODES:
            server.search("warm up", mode)  # loads the model and this thread's index
        for q in queries:
            for name, case in passes:
                took, reply = server.search(case(q), name.split()[0])
                seconds.setdefault(name, []).append(took)
                seconds.setdefault(name + " took_ms", []).append(reply["took_ms"] / 1000)
    return seconds


# -- the report ---------------------------------------------------------------------

def run(quick: bool) -> Section:
    """Build or reuse the databases, then measure each size."""
    sizes = (20_000,) if quick else (20_000, 200_000)
    queries = pick_queries(20 if quick else 50)
    parts, data = [], {"queries": len(queries), "noise_sigma": NOISE, "k": K}
    for size in sizes:
        built, path = timed(lambda: grown_db(size))
        markdown, data[str(size)] = measure(path, size, queries, quick)
        data[str(size)]["build_or_reuse_s"] = round(built, 1)
        parts.append(markdown)
    intro = (
        f"{len(queries)} post titles as queries, against the shared corpus (2,919 passages) "
        f"grown with copies of its posts (same text; each vector plus N(0, {NOISE}) noise per "
        "dimension, renormalised) to the size shown. Latencies are p50 / p95 over the "
        "queries; one-off costs are min / median / max over 3 repeats. In-process runs use "
        "the uncached embedder (every query embedded); through gunicorn each mode gets the "
        "titles in another letter case so they are new to the server's query cache (same "
        "results: the model is uncased, FTS5 folds case), then hybrid is repeated, cached.")
    return Section("Search latency", "\n\n".join([intro, *parts]), data)


def measure(path: Path, size: int, queries: list[str], quick: bool) -> tuple[str, dict]:
    """Every figure for one database: (Markdown, numbers for results.json)."""
    from ragserver.storage import open_storage

    conn = open_storage(path, readonly=True)
    stats = conn.get_stats()
    conn.close()
    load_before = os.getloadavg()[0]
    local, vectors, vss_top = in_process(path, queries)
    served = through_server(path, queries)
    cold = Figure("new connection: open + first vector search", "s",
                  [first_search(path, vectors[0]) for _ in range(3)])
    load = Figure(f"numpy: load the {size:,} × {stats.model.dimension} matrix", "s", [])
    for _ in range(3):
        seconds, (ids, matrix) = timed(lambda: load_matrix(path))
        load.values.append(seconds)
    local["numpy"] = [timed(lambda: scan(ids, matrix, v))[0] for v in vectors]
    agree = np.mean([len(set(scan(ids, matrix, v)) & set(top)) / K
                     for v, top in zip(vectors, vss_top)])
    del matrix
    local["llm"] = llm_similar(path, queries[:3 if quick else (10 if size <= 20_000 else 5)])
    local["llm cli"] = [llm_cli(path, q) for q in queries[:2 if quick else 3]]
    load_after = os.getloadavg()[0]

    heading = (f"### {size:,} passages ({stats.posts:,} posts; database "
               f"{stats.db_bytes / 2**20:,.0f} MB, of which the vss index "
               f"{stats.index_bytes / 2**20:,.0f} MB)\n\nLoad average (1 min) on the machine: "
               f"{load_before:.1f} before, {load_after:.1f} after these measurements (2 cores; "
               "this benchmark accounts for about 1).")
    markdown = "\n\n".join([
        heading,
        table(LATENCY_HEADERS, latency_rows(local, served)),
        table(COMPARE_HEADERS, [
            compare(cold, Figure("warm `storage.search_index`", "s", local["index"]), 3),
            compare(load, Figure("numpy scan, one query", "s", local["numpy"]), 3)]),
        "\n".join(f"- {line}" for line in findings(local, served, cold, agree))])
    numbers = {name: {"p50_ms": round(percentile(v, 50) * 1000, 2),
                      "p95_ms": round(percentile(v, 95) * 1000, 2)}
               for name, v in [*local.items(), *served.items()]}
    numbers.update(passages=stats.passages, posts=stats.posts, db_bytes=stats.db_bytes,
                   index_bytes=stats.index_bytes, new_connection_s=cold.values,
                   matrix_load_s=load.values, numpy_vss_agreement=round(float(agree), 3),
                   load_average=[load_before, load_after])
    return markdown, numbers


def latency_rows(local: dict, served: dict) -> list[list]:
    """Each latency beside its baseline: ragserver's in-process search of the same kind."""
    vector = ("ragserver vector, in-process", local["vector"])
    keyword = ("ragserver keyword, in-process", local["keyword"])
    hybrid = ("ragserver hybrid, in-process", local["hybrid"])
    rows = [
        (("ragserver keyword, in-process", local["keyword"]), vector),
        (("ragserver hybrid, in-process", local["hybrid"]), vector),
        (("of a vector search: `embed_query` alone", local["embed"]), vector),
        ((f"of a vector search: `storage.search_index` alone (k={K})", local["index"]), vector),
        (("`embed_query`, torch on 1 thread", local["embed 1 thread"]), vector),
        ((f"of a hybrid search: `storage.search_keyword` (k={CANDIDATES})", local["fts"]), hybrid),
        ((f"numpy scan, vector given (`matrix @ q`, top {K})", local["numpy"]), vector),
        ((f"llm `Collection.similar` ({len(local['llm'])} queries)", local["llm"]), vector),
        ((f"`llm similar -c` command ({len(local['llm cli'])} runs)", local["llm cli"]), vector),
        (("gunicorn vector, new query", served["vector"]), vector),
        (("gunicorn keyword", served["keyword"]), keyword),
        (("gunicorn hybrid, new query", served["hybrid"]), hybrid),
        (("gunicorn hybrid, repeated (cached vector)", served["hybrid cached"]), hybrid),
    ]
    return [latency_row(figure, baseline) for figure, baseline in rows]


def findings(local: dict, served: dict, cold: Figure, agree: float) -> list[str]:
    """What the numbers say, with the numbers."""
    p50 = {name: percentile(values, 50) for name, values in local.items()}
    at_client = {name: percentile(values, 50) for name, values in served.items()}
    return [
        f"Embedding the query is {p50['embed'] / p50['vector']:.0%} of an in-process vector "
        f"search ({format_ms(p50['embed'])} of {format_ms(p50['vector'])} ms at p50).",
        f"With torch on one thread a query embeds in {format_ms(p50['embed 1 thread'])} ms "
        f"against {format_ms(p50['embed'])} ms with its default of one thread per core"
        + (": torch's OpenMP threads spin while they wait for each other, so while another "
           "process holds a core every step of the model waits for the scheduler."
           if p50["embed"] > 2 * p50["embed 1 thread"] else "."),
        f"FTS5 keyword search is {p50['fts'] / p50['hybrid']:.0%} of a hybrid search "
        f"({format_ms(p50['fts'])} of {format_ms(p50['hybrid'])} ms): FTS5 ranks every passage "
        "that has any of the query's words (stopwords are left out) before it takes the best.",
        f"sqlite-vss search plus fetching the {K} passages takes {format_ms(p50['index'])} ms; "
        f"a numpy scan of the same vectors {format_ms(p50['numpy'])} ms "
        f"({p50['index'] / p50['numpy']:.1f}×). They return the same top {K} passages "
        f"{agree:.0%} of the time (both are exact; noisy copies make near-ties).",
        f"A new connection's first search takes {cold.median:.2f} s against "
        f"{format_ms(p50['index'])} ms warm: sqlite-vss loads the whole index into each "
        "connection. The server holds one per thread (up to 8) and reopens every one after "
        "each ingest.",
        f"Through gunicorn a new hybrid query takes {format_ms(at_client['hybrid'])} ms at the "
        f"client, {format_ms(at_client['hybrid took_ms'])} ms by the server's own `took_ms`; "
        f"a repeated one {format_ms(at_client['hybrid cached'])} ms.",
    ]
