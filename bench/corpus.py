"""Benchmark databases built from the shared corpus, and queries taken from it.

The shared corpus (282 posts, about 2,900 passages) is ingested once with the real
pipeline; that database is then grown to N passages with copies of its posts (source
`copy7/sqlite/x.md`, same title and text) written through the storage backend in transactions
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
    from ragserver.storage import open_storage

    path = WORK / "search-corpus.db"
    if path.exists():
        return path
    from ragserver.ingest.pipeline import Ingester
    from ragserver.ingest.sources import open_source
    from ragserver.embedder import SentenceTransformerEmbedder

    partial = WORK / "search-corpus.db.partial"
    _remove(partial)
    conn = open_storage(partial, create=True)  # before the model: torch before sqlite-vss
    embedder = SentenceTransformerEmbedder(MODEL, "", "")
    Ingester(conn, embedder).run([open_source(str(CORPUS), base_url="https://til.example/")])
    assert conn.count_vectors() == conn.count_index_rows()
    conn.close()
    partial.rename(path)
    return path


def grown_db(size: int) -> Path:
    """A copy of the corpus database grown to `size` passages (built once, then reused)."""
    from ragserver.storage import NewPassage, NewPost, open_storage

    path = WORK / f"search-{size}.db"
    if path.exists() and _counts_ok(path, size):
        return path
    partial = WORK / f"search-{size}.db.partial"
    _remove(partial)
    shutil.copyfile(corpus_db(), partial)
    conn = open_storage(partial)
    posts = conn.list_posts()
    passages = {p.id: conn.passages_for_post(p.id) for p in posts}
    vectors = {pid: m for pid, _, m in conn.passage_vectors_of_posts(list(passages))}
    rng = np.random.default_rng(0)
    needed = size - conn.count_vectors()
    copies = itertools.islice(_copies(posts, passages, vectors), needed)
    while batch := list(itertools.islice(copies, COMMIT_ROWS)):
        with conn.transaction():
            # A post's passages may fall in two batches: writing it again adds the rest.
            for source, items in itertools.groupby(batch, key=lambda item: item[0]):
                written = []
                for _, post, passage, vector in items:
                    noisy = vector + rng.normal(0, NOISE, vector.shape).astype(np.float32)
                    written.append(NewPassage(
                        position=passage.position, heading_path=passage.heading_path,
                        anchor=passage.anchor, text=passage.text,
                        content_hash=passage.content_hash, vector=noisy / np.linalg.norm(noisy)))
                conn.write_post(NewPost(source=source, origin="bench", title=post.title,
                                        url=post.url, date=post.date, tags=post.tags,
                                        content_hash=post.content_hash), written, [])
            conn.bump_generation()
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
    from ragserver.storage import open_storage

    conn = open_storage(conn_or_path) if isinstance(conn_or_path, Path) else conn_or_path
    stats = conn.get_stats()
    if conn is not conn_or_path:
        conn.close()
    return stats.passages == stats.vectors == stats.index_rows == size and stats.index_state == "ok"


def _remove(path: Path) -> None:
    for extra in ("", "-wal", "-shm", ".lock"):
        Path(f"{path}{extra}").unlink(missing_ok=True)


def pick_queries(n: int) -> list[str]:
    """n post titles spread evenly over the corpus, each with four distinct letter cases."""
    from ragserver.storage import open_storage

    conn = open_storage(corpus_db(), readonly=True)
    titles = [p.title for p in conn.list_posts()]
    conn.close()
    usable = [t for t in titles if len({v(t) for v in CASES}) == len(CASES)]
    step = len(usable) / n
    return [usable[int(i * step)] for i in range(n)]


# Same results for an uncased model and FTS5, but a new text for the query cache.
CASES = (str, str.lower, str.upper, str.swapcase)
