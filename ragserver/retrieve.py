"""Retrieval: turn a question into the passages that best answer it."""

from __future__ import annotations

from . import store
from .embedder import Embedder


def search_passages(conn, embedder: Embedder, query: str, k: int = 10) -> list[store.Hit]:
    """Passages nearest to the query, best first ([] for an empty database)."""
    store.check_model(conn, embedder.info)
    if store.count_index_rows(conn) == 0:
        return []
    return store.search_index(conn, embedder.embed_query(query), k)
