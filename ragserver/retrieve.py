"""Retrieval: turn a question into the passages that best answer it.

The one way passages are found. A search runs the rankings its mode names (RANKINGS),
fuses them when there are several, then passes the hits through every step in STEPS
in order. A new ranking (say, by post date) is a function plus a row in RANKINGS and
MODES; a new step (a reranker, a filter) is a function `step(db, query, hits) -> hits`
plus its place in STEPS.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from .embedder import Embedder
from .storage import Hit, Storage

RRF_K = 60  # reciprocal rank fusion constant (Cormack et al.)
CANDIDATES = 50  # passages taken from each ranking before fusion


@dataclass
class Query:
    """A query's text, and its vector once a ranking needed it (embedded at most once)."""

    text: str
    embedder: Embedder
    _vector: np.ndarray | None = field(default=None, repr=False)

    @property
    def vector(self) -> np.ndarray:
        """The query embedded with the configured model (computed on first use)."""
        if self._vector is None:
            self._vector = self.embedder.embed_query(self.text)
        return self._vector

    @property
    def embedded(self) -> bool:
        """Whether a ranking embedded the query."""
        return self._vector is not None


def by_vector(db: Storage, query: Query, k: int) -> list[Hit]:
    """Passages nearest to the query's vector; scores are cosine similarities."""
    return db.search_index(query.vector, k)


def by_keyword(db: Storage, query: Query, k: int) -> list[Hit]:
    """Passages ranked by the backend's full-text search; scores are its own."""
    return db.search_keyword(query.text, k)


def with_similarity(db: Storage, query: Query, hits: list[Hit]) -> list[Hit]:
    """Give every hit of an embedded query its cosine similarity to the query, whichever
    ranking found it: the relevance gate compares that."""
    if not query.embedded:
        return hits
    unknown = [h.passage_id for h in hits if h.similarity is None]
    stored = db.passage_vectors(unknown)
    return [h if h.similarity is not None else
            replace(h, similarity=float(stored[h.passage_id] @ query.vector)
                    if h.passage_id in stored else None)
            for h in hits]


Ranking = Callable[[Storage, Query, int], list[Hit]]
Step = Callable[[Storage, Query, list[Hit]], list[Hit]]

RANKINGS: dict[str, Ranking] = {"vector": by_vector, "keyword": by_keyword}
MODES: dict[str, tuple[str, ...]] = {
    "hybrid": ("vector", "keyword"),
    "vector": ("vector",),
    "keyword": ("keyword",),
}
STEPS: tuple[Step, ...] = (with_similarity,)


def fuse(rankings: list[list[Hit]], weights: list[float], k: int) -> list[Hit]:
    """Weighted reciprocal rank fusion; a hit's score becomes its fused score."""
    scores: dict[int, float] = {}
    first: dict[int, Hit] = {}
    for hits, weight in zip(rankings, weights):
        for rank, hit in enumerate(hits, 1):
            scores[hit.passage_id] = scores.get(hit.passage_id, 0.0) + weight / (RRF_K + rank)
            first.setdefault(hit.passage_id, hit)
    best = sorted(scores, key=scores.get, reverse=True)[:k]
    return [replace(first[pid], score=scores[pid]) for pid in best]


def retrieve(db: Storage, embedder: Embedder, query: str, k: int = 10, mode: str = "hybrid",
             vector_weight: float = 1.0, keyword_weight: float = 1.0) -> list[Hit]:
    """Passages for the query, best first, by the rankings of `mode` fused, then STEPS.

    The search page, /api/search, the chat, /api/ask and the CLI all come here. A mode
    that ranks by vector finds nothing while the vector index is empty (a database
    being built or reindexed), and refuses a database built with another model.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    names = MODES[mode]
    if "vector" in names:
        db.check_model(embedder.info)
        if db.index_is_empty():
            return []
    found = Query(query, embedder)
    if len(names) == 1:
        hits = RANKINGS[names[0]](db, found, k)
    else:
        weights = {"vector": vector_weight, "keyword": keyword_weight}
        hits = fuse([RANKINGS[name](db, found, CANDIDATES) for name in names],
                    [weights.get(name, 1.0) for name in names], k)
    for step in STEPS:
        hits = step(db, found, hits)
    return hits


def search_passages(db: Storage, embedder: Embedder, query: str, k: int = 10) -> list[Hit]:
    """Passages nearest to the query, best first ([] for an empty database)."""
    return retrieve(db, embedder, query, k, mode="vector")


def search_posts(db: Storage, embedder: Embedder, query: str, n: int = 10, mode: str = "hybrid",
                 offset: int = 0, per_post: int = 1) -> list[list[Hit]]:
    """Matching posts, best first (n posts after offset): each its best `per_post` passages."""
    groups: dict[str, list[Hit]] = {}
    for hit in retrieve(db, embedder, query, CANDIDATES * 2, mode=mode):
        group = groups.setdefault(hit.source, [])
        if len(group) < per_post:
            group.append(hit)
    return list(groups.values())[offset:offset + n]
