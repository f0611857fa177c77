"""Benchmark databases built from the shared corpus, and queries taken from it.

The shared corpus (282 posts, about 2,900 passages) is ingested once with the real
pipeline; that database is then grown to N passages with copies of its posts (source
`copy7/sqlite/x.md`, same title and text) written through ragserver.store in transactions
of 1,000 passages, as ingest writes them. A copy's vector is the original's plus Gaussian
noise (sigma 0.01 per dimension, then renormalised: cosine about 0.98 to the original), so
copies do not tie exactly. Built databases are kept in /tmp/ragserver-bench/ and reused
when their counts are right.

Queries are post titles spread over the corpus, each usable in four letter cases: the
model is uncased and FTS5 folds case, so every case gives the same results, but each is a
new text to the server's query cache.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np

from common import CORPUS, MODEL

WORK = Path("/tmp/ragserver-bench")
COMMIT_ROWS = 1000  # passages per transaction while growing a database
NOISE = 0.01  # per-dimension sigma added to a copy's vector


def corpus_db() -> Path:
    """The shared corpus ingested by the real pipeline, built once."""
    from ragserver import store
    from ragserver.db import connect, init_schema

    path = WORK / "search-corpus.db"
    if path.exists():
        return path
    from ingest.pipeline import Ingester
    from ingest.sources import open_source
    from ragserver.embedder import SentenceTransformerEmbedder

    partial = WORK / "search-corpus.db.partial"
    _remove(partial)
    conn = connect(partial)  # before the model: torch must be imported before sqlite-vss
    init_schema(conn)
    embedder = SentenceTransformerEmbedder(MODEL, "", "")
    Ingester(conn, embedder).run([open_source(str(CORPUS), base_url="https://til.example/")])
    assert store.count_vectors(conn) == store.count_index_rows(conn)
    conn.close()
    partial.rename(path)
    return path


def grown_db(size: int) -> Path:
    """A copy of the corpus database grown to `size` passages (built once, then reused)."""
    from ragserver import store
    from ragserver.db import connect, transaction

    path = WORK / f"search-{size}.db"
    if path.exists() and _counts_ok(path, size):
        return path
    partial = WORK / f"search-{size}.db.partial"
    _remove(partial)
    shutil.copyfile(corpus_db(), partial)
    conn = connect(partial)
    posts = store.list_posts(conn)
    passages = {p.id: store.passages_for_post(conn, p.id) for p in posts}
    vectors = {pid: m for pid, _, m in store.passage_vectors_of_posts(conn, list(passages))}
    cid = store.collection_id(conn)
    rng = np.random.default_rng(0)
    needed = size - store.count_vectors(conn)
    copies = itertools.islice(_copies(posts, passages, vectors), needed)
    post_ids: dict[str, int] = {}
    while batch := list(itertools.islice(copies, COMMIT_ROWS)):
        with transaction(conn):
            for source, post, passage, vector in batch:
                noisy = vector + rng.normal(0, NOISE, vector.shape).astype(np.float32)
                if source not in post_ids:
                    post_ids[source] = store.save_post(
                        conn, source=source, origin="bench", title=post.title, url=post.url,
                        date=post.date, tags=post.tags, content_hash=post.content_hash)
                row = {"source": source, "title": post.title, "url": post.url}
                store.insert_passage(conn, cid, row, post_ids[source], store.NewPassage(
                    position=passage.position, heading_path=passage.heading_path,
                    anchor=passage.anchor, text=passage.text,
                    content_hash=passage.content_hash, vector=noisy / np.linalg.norm(noisy)))
            store.bump_generation(conn)
    ok = _counts_ok(conn, size)
    conn.close()
    assert ok, f"{partial} did not come out with {size} passages"
    partial.rename(path)
    return path


def _copies(posts, passages, vectors):
    """(source, post, passage, vector) of copy 1, 2, ... of every post, endlessly."""
    for number in itertools.count(1):
        for post in posts:
            for passage, vector in zip(passages[post.id], vectors[post.id]):
                yield f"copy{number}/{post.source}", post, passage, vector


def _counts_ok(conn_or_path, size: int) -> bool:
    from ragserver import store
    from ragserver.db import connect

    conn = connect(conn_or_path) if isinstance(conn_or_path, Path) else conn_or_path
    stats = store.get_stats(conn)
    if conn is not conn_or_path:
        conn.close()
    return stats.passages == stats.vectors == stats.index_rows == size and stats.index_state == "ok"


def _remove(path: Path) -> None:
    for extra in ("", "-wal", "-shm", ".lock"):
        Path(f"{path}{extra}").unlink(missing_ok=True)


def pick_queries(n: int) -> list[str]:
    """n post titles spread evenly over the corpus, each with four distinct letter cases."""
    from ragserver import store
    from ragserver.db import connect

    conn = connect(corpus_db(), readonly=True)
    titles = [p.title for p in store.list_posts(conn)]
    conn.close()
    usable = [t for t in titles if len({v(t) for v in CASES}) == len(CASES)]
    step = len(usable) / n
    return [usable[int(i * step)] for i in range(n)]


# Same results for an uncased model and FTS5, but a new text for the query cache.
CASES = (str, str.lower, str.upper, str.swapcase)
