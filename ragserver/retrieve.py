"""Retrieval: turn a question into the passages that best answer it."""

from __future__ import annotations

from dataclasses import replace

from . import store
from .embedder import Embedder

MODES = ("hybrid", "vector", "keyword")
RRF_K = 60  # reciprocal rank fusion constant (Cormack et al.)
CANDIDATES = 50  # passages taken from each ranking before fusion


def search_passages(conn, embedder: Embedder, query: str, k: int = 10) -> list[store.Hit]:
    """Passages nearest to the query, best first ([] for an empty database)."""
    store.check_model(conn, embedder.info)
    if store.count_index_rows(conn) == 0:
        return []
    return store.search_index(conn, embedder.embed_query(query), k)


def fuse(rankings: list[list[store.Hit]], weights: list[float], k: int) -> list[store.Hit]:
    """Weighted reciprocal rank fusion; a hit's score becomes its fused score."""
    scores: dict[int, float] = {}
    first: dict[int, store.Hit] = {}
    for hits, weight in zip(rankings, weights):
        for rank, hit in enumerate(hits, 1):
            scores[hit.passage_id] = scores.get(hit.passage_id, 0.0) + weight / (RRF_K + rank)
            first.setdefault(hit.passage_id, hit)
    best = sorted(scores, key=scores.get, reverse=True)[:k]
    return [replace(first[pid], score=scores[pid]) for pid in best]


def retrieve(conn, embedder: Embedder, query: str, k: int = 10, mode: str = "hybrid",
             vector_weight: float = 1.0, keyword_weight: float = 1.0) -> list[store.Hit]:
    """The one way passages are found: by vector similarity, FTS5 keywords, or both fused.

    The search page, /api/search, the chat, /api/ask and the CLI all come here. Every
    hit of an embedded query carries its cosine similarity to the query, whichever
    ranking found it: the relevance gate compares that.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "vector":
        return search_passages(conn, embedder, query, k)
    if mode == "keyword":
        return store.search_keyword(conn, query, k)
    store.check_model(conn, embedder.info)
    if store.count_index_rows(conn) == 0:
        return []
    vector = embedder.embed_query(query)
    fused = fuse([store.search_index(conn, vector, CANDIDATES),
                  store.search_keyword(conn, query, CANDIDATES)],
                 [vector_weight, keyword_weight], k)
    unknown = [h.passage_id for h in fused if h.similarity is None]
    stored = store.passage_vectors(conn, unknown)
    return [h if h.similarity is not None else
            replace(h, similarity=float(stored[h.passage_id] @ vector)
                    if h.passage_id in stored else None)
            for h in fused]


def search_posts(conn, embedder: Embedder, query: str, n: int = 10, mode: str = "hybrid",
                 offset: int = 0, per_post: int = 1) -> list[list[store.Hit]]:
    """Matching posts, best first (n posts after offset): each its best `per_post` passages."""
    groups: dict[str, list[store.Hit]] = {}
    for hit in retrieve(conn, embedder, query, CANDIDATES * 2, mode=mode):
        group = groups.setdefault(hit.source, [])
        if len(group) < per_post:
            group.append(hit)
    return list(groups.values())[offset:offset + n]
