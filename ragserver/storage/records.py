"""What storage hands to the rest of ragserver: small frozen records, whatever the backend."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class ModelMismatchError(RuntimeError):
    """The database was built with a different embedding model or prefixes."""


class BackendUnavailable(RuntimeError):
    """The software a storage backend needs (an extension, a driver) cannot be loaded."""


class IngestLocked(RuntimeError):
    """Another ingest or reindex holds the database's writer lock."""


class CannotWrite(RuntimeError):
    """The database cannot be written: a read-only file system, permissions."""


class NotADatabase(RuntimeError):
    """The target exists but holds no ragserver database."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    dimension: int
    query_prefix: str
    passage_prefix: str


@dataclass(frozen=True)
class NewPost:
    """A post ready to write, as the ingest read it."""

    source: str
    origin: str
    title: str
    url: str
    date: str | None
    tags: tuple[str, ...]
    content_hash: str


@dataclass(frozen=True)
class Post(NewPost):
    """A stored post: what was written, and its id."""

    id: int


@dataclass(frozen=True)
class StoredPassage:
    id: int
    post_id: int
    position: int
    heading_path: tuple[str, ...]
    anchor: str
    text: str
    content_hash: str


@dataclass(frozen=True)
class NewPassage:
    """A passage ready to write: its clean text, where it sits, and its vector."""

    position: int
    heading_path: tuple[str, ...]
    anchor: str
    text: str
    content_hash: str
    vector: np.ndarray


@dataclass(frozen=True)
class KeptPassage:
    """A stored passage that stays in its post, perhaps at another place: no new vector."""

    id: int
    position: int
    heading_path: tuple[str, ...]
    anchor: str


@dataclass(frozen=True)
class Hit:
    passage_id: int
    source: str
    title: str
    url: str
    anchor: str
    heading_path: tuple[str, ...]
    text: str
    score: float  # by the ranking that found it: cosine, BM25 or fused
    date: str | None = None
    similarity: float | None = None  # cosine similarity to the query, when it was embedded

    @property
    def link(self) -> str:
        """The post URL with the passage's #anchor ('' when the post has no URL)."""
        return f"{self.url}#{self.anchor}" if self.url and self.anchor else self.url


@dataclass(frozen=True)
class ExamplePost:
    title: str
    url: str


@dataclass(frozen=True)
class RelatedPost:
    source: str
    title: str
    url: str
    date: str | None
    score: float


@dataclass(frozen=True)
class Topic:
    """A group of similar posts, named by its keywords or by a label the model wrote."""
    id: int
    label: str
    label_source: str  # "model" or "keywords"
    keywords: tuple[str, ...]
    x: float  # the centre of its posts on the map
    y: float


@dataclass(frozen=True)
class MapPoint:
    """A post on the map: its topic, where it sits (0..1 both ways) and how central it is to
    its topic (cosine to the topic's mean vector)."""
    post_id: int
    source: str
    title: str
    url: str
    date: str | None
    topic: int
    x: float
    y: float
    centrality: float


@dataclass(frozen=True)
class Stats:
    posts: int
    passages: int
    vectors: int
    index_rows: int
    index_bytes: int
    db_bytes: int
    model: ModelInfo | None
    generation: int
    index_state: str  # ok, or rebuilding while `ragserver reindex` runs (or was killed)
    vector_index: str = "vss"


def check_model(stored: ModelInfo | None, configured: ModelInfo) -> None:
    """Raise ModelMismatchError if a database built with `stored` cannot serve `configured`."""
    if stored is None or stored == configured:
        return
    raise ModelMismatchError(
        f"this database was built with embedding model {stored.name!r} "
        f"(dimension {stored.dimension}, query prefix {stored.query_prefix!r}, passage prefix "
        f"{stored.passage_prefix!r}) but the configured model is {configured.name!r} "
        f"(dimension {configured.dimension}, query prefix {configured.query_prefix!r}, passage "
        f"prefix {configured.passage_prefix!r}). Run `ragserver reindex` to re-embed every "
        f"passage with the configured model, or set RAGSERVER_EMBEDDING_MODEL back to "
        f"{stored.name!r}.")
