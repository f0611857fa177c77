"""Which post vector makes the best related-posts lists? And what does a refresh cost?

The shared corpus files its 282 posts under topic folders (sqlite/, python/, ...). A
related list is judged by the share of its ten posts from the post's own topic
(same-topic@10): crude, since related posts may well cross topics, but it compares
post vectors fairly. Then the time of a full refresh and of one after a single edit.

    python bench/related_quality.py [DB_PATH]
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "til"


def same_topic_at_10(ids: list[int], topic: dict[int, str], matrix: np.ndarray) -> float:
    matrix = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    sims = matrix @ matrix.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1)[:, :10]
    return float(np.mean([[topic[ids[j]] == topic[ids[i]] for j in row]
                          for i, row in enumerate(top)]))


def main() -> None:
    from ragserver.ingest.pipeline import Ingester
    from ragserver.ingest.sources import open_source
    from ragserver import related
    from ragserver.storage import open_storage
    from ragserver.embedder import SentenceTransformerEmbedder

    db_path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/ragserver-related.db")
    conn = open_storage(db_path, create=True)
    embedder = SentenceTransformerEmbedder("sentence-transformers/all-MiniLM-L6-v2", "", "")
    Ingester(conn, embedder).run([open_source(str(CORPUS))])

    posts = conn.list_posts()
    ids = [p.id for p in posts]
    topic = {p.id: p.source.split("/")[0] for p in posts}
    passages = {pid: m for pid, _, m in conn.passage_vectors_of_posts(ids)}
    sizes = Counter(topic.values())
    n = len(ids)
    print(f"{n} posts in {len(sizes)} topics; same-topic@10 of a random list: "
          f"{sum(c * (c - 1) for c in sizes.values()) / (n * (n - 1)):.3f}")
    for name, vector in [("mean of all passages (used)", related.post_vector),
                         ("first passage (title + lead)", lambda m: m[0]),
                         ("mean of first three passages", lambda m: m[:3].mean(axis=0))]:
        matrix = np.stack([vector(passages[i]) for i in ids])
        print(f"{name:30s} same-topic@10 {same_topic_at_10(ids, topic, matrix):.3f}")

    with conn.transaction():
        conn.conn.execute("DELETE FROM post_vectors")
    started = time.perf_counter()
    lists = related.refresh(conn)
    print(f"full refresh: {lists} lists in {time.perf_counter() - started:.2f}s")
    with conn.transaction():  # as if one post had been edited
        conn.conn.execute("UPDATE post_vectors SET content_hash = 'edited' WHERE post_id = ?",
                          (ids[0],))
    started = time.perf_counter()
    lists = related.refresh(conn)
    print(f"refresh after one edit: {lists} lists in {time.perf_counter() - started:.2f}s")


if __name__ == "__main__":
    main()
