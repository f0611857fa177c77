"""sqlite-vss against sqlite-vec, the two vector indexes ragserver can use.

Both are built in fresh databases from the same vectors: the corpus's real passage
vectors, repeated with a little Gaussian noise (sigma 0.02 per dimension, then
renormalised) until there are enough. For each index:

- commit cost as it grows: seconds to insert and commit 1,000 rows at each size;
- search: p50 / p95 of a top-10 query straight against the index (no joins), 200
  queries drawn from the real vectors;
- size on disk of the index itself;
- how long until a reader sees a new row: a writer commits one row and bumps the
  generation counter as ragserver does; a read-only storage (`refresh()` reopens when the
  counter moves) searches until the row turns up.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from common import CORPUS, MODEL, Figure, Section, percentile, table

BATCH = 1000
NOISE = 0.02


def real_vectors() -> np.ndarray:
    """The corpus's passage vectors (ingested once, then cached in /tmp as .npy)."""
    cache = Path(tempfile.gettempdir()) / "ragserver-bench" / "corpus-vectors.npy"
    if cache.exists():
        return np.load(cache)
    from ragserver.ingest.pipeline import Ingester
    from ragserver.ingest.sources import open_source
    from ragserver.storage import open_storage
    from ragserver.storage.sqlite import blob_to_vector
    from ragserver.embedder import SentenceTransformerEmbedder

    with tempfile.TemporaryDirectory() as scratch:
        conn = open_storage(Path(scratch) / "corpus.db", create=True)
        Ingester(conn, SentenceTransformerEmbedder(MODEL, "", "")).run([open_source(str(CORPUS))])
        vectors = np.stack([blob_to_vector(blob) for rows in conn.iter_vectors()
                            for _, blob in rows])
        conn.close()
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors)
    return vectors


def grown(vectors: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n vectors: the real ones, then noisy copies of them, all unit length."""
    picks = np.resize(np.arange(len(vectors)), n)
    out = vectors[picks] + rng.normal(0, NOISE, (n, vectors.shape[1])).astype(np.float32)
    out[:len(vectors)] = vectors[:n]
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def build(kind: str, path: Path, vectors: np.ndarray, checkpoints: list[int]) -> dict[int, float]:
    """Create the index and fill it in 1,000-row commits; seconds per commit at each checkpoint."""
    from ragserver.storage import open_storage
    from ragserver.storage.sqlite import vector_to_blob

    conn = open_storage(path, create=True)
    with conn.transaction():
        conn.set_vector_index(kind)
        conn.create_index(vectors.shape[1])
    costs = {}
    for start in range(0, len(vectors), BATCH):
        rows = [(start + i + 1, vector_to_blob(v))
                for i, v in enumerate(vectors[start:start + BATCH])]
        started = time.perf_counter()
        with conn.transaction():
            conn.insert_index_rows(rows)
            conn.bump_generation()
        if start in checkpoints:
            costs[start] = time.perf_counter() - started
    conn.close()
    return costs


def search_latency(path: Path, queries: np.ndarray) -> list[float]:
    """Seconds of each top-10 query against the index alone."""
    from ragserver.storage import open_storage
    from ragserver.storage.sqlite import vector_to_blob

    conn = open_storage(path)
    index = conn.vector_index()
    conn.conn.execute(index.search, (vector_to_blob(queries[0]), 10)).fetchall()  # load it
    seconds = []
    for query in queries:
        started = time.perf_counter()
        conn.conn.execute(index.search, (vector_to_blob(query), 10)).fetchall()
        seconds.append(time.perf_counter() - started)
    conn.close()
    return seconds


def visibility(path: Path, dimension: int, rng: np.random.Generator) -> float:
    """Seconds from a writer's commit until a reader's search returns the new row."""
    from ragserver.storage import open_storage
    from ragserver.storage.sqlite import vector_to_blob

    reader = open_storage(path)
    index = reader.vector_index()
    probe = rng.normal(0, 1, dimension).astype(np.float32)
    probe /= np.linalg.norm(probe)
    blob = vector_to_blob(probe)
    reader.conn.execute(index.search, (blob, 1)).fetchall()  # index loaded before
    writer = open_storage(path)
    rowid = 10**9 + rng.integers(10**6)
    with writer.transaction():
        writer.insert_index_rows([(int(rowid), blob)])
        writer.bump_generation()
    started = time.perf_counter()
    while time.perf_counter() - started < 60:
        reader.refresh()
        found = reader.conn.execute(index.search, (blob, 1)).fetchall()
        if found and found[0][0] == rowid:
            break
    else:
        raise AssertionError(f"a {index.kind} reader did not see a committed row in 60 s")
    seconds = time.perf_counter() - started
    with writer.transaction():
        writer.conn.execute(f"DELETE FROM {index.table} WHERE rowid = ?", (int(rowid),))
        writer.bump_generation()
    writer.close()
    reader.close()
    return seconds


def run(quick: bool) -> Section:
    rng = np.random.default_rng(7)
    real = real_vectors()
    sizes = [20_000] if quick else [20_000, 100_000]
    queries = real[rng.choice(len(real), 50 if quick else 200, replace=False)]
    rows, data = [], {}
    with tempfile.TemporaryDirectory(prefix="ragserver-index-") as scratch:
        for size in sizes:
            vectors = grown(real, size, rng)
            checkpoints = [0, size // 2 // BATCH * BATCH, size - BATCH]
            for kind in ("vss", "vec"):
                path = Path(scratch) / f"{kind}-{size}.db"
                started = time.perf_counter()
                costs = build(kind, path, vectors, checkpoints)
                build_s = time.perf_counter() - started
                latency = Figure(f"{kind} search", "ms",
                                 [s * 1000 for s in search_latency(path, queries)])
                seen = Figure(f"{kind} reader sees a new row", "ms",
                              [visibility(path, real.shape[1], rng) * 1000
                               for _ in range(2 if quick else 5)])
                from ragserver.storage import open_storage

                conn = open_storage(path)
                index_bytes = conn.get_stats().index_bytes
                conn.close()
                path.unlink()
                data[f"{kind}-{size}"] = {
                    "build_s": build_s, "commit_s": costs, "search_ms": latency.values,
                    "visible_ms": seen.values, "index_bytes": index_bytes}
                rows.append([f"{size:,}", kind, f"{build_s:.0f} s",
                             " / ".join(f"{costs[c]:.2f}" for c in checkpoints),
                             f"{percentile(latency.values, 50):.1f} / {percentile(latency.values, 95):.1f}",
                             f"{index_bytes / 1e6:.0f} MB", seen.spread(0)])
    ratios = []
    for size in sizes:
        vss, vec = data[f"vss-{size}"], data[f"vec-{size}"]
        ratios.append(f"at {size:,} vectors sqlite-vec's median search takes "
                      f"{np.median(vec['search_ms']) / np.median(vss['search_ms']):.2f}× "
                      f"sqlite-vss's, and its last 1,000-row commit "
                      f"{vec['commit_s'][max(vec['commit_s'])] / vss['commit_s'][max(vss['commit_s'])]:.2f}× "
                      f"as long")
    markdown = "\n".join([
        f"The corpus's {len(real):,} real passage vectors (384 dimensions), grown with noisy "
        f"copies (σ {NOISE}) to each size and inserted in {BATCH:,}-row commits; "
        f"{len(queries)} top-10 queries from real vectors, straight against the index.", "",
        table(["vectors", "index", "build", "s per 1,000-row commit (first / middle / last)",
               "search p50 / p95 (ms)", "index size", "reader sees a new row, min / median / max (ms)"],
              rows), "",
        "Ratio: " + "; ".join(ratios) + ".",
        "",
        "sqlite-vss (Faiss, flat index) keeps the whole index in one blob that every commit "
        "rewrites, so commits grow with the index, and a reader must reopen its connection "
        "(reloading that blob) to see other connections' writes. sqlite-vec stores vectors in "
        "chunks of ordinary rows and scans them for each query: commits stay flat and readers "
        "see writes at once.",
    ])
    return Section("Vector index: sqlite-vss and sqlite-vec", markdown, data)
