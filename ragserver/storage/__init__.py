"""Where posts, passages and vectors live: the protocol every backend implements, and the
table that picks a backend for a database path or URL.

A second backend is one module with a class that implements `Storage`, plus its row
in BACKENDS. Nothing outside this package knows which backend it talks to.
"""

from __future__ import annotations

import importlib
import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Callable, Iterator, Protocol
from urllib.parse import unquote, urlsplit

import numpy as np

from .records import (BackendUnavailable, CannotWrite, ExamplePost, Hit, IngestLocked,
                      KeptPassage, MapPoint, ModelInfo, ModelMismatchError, NewPassage, NewPost,
                      NotADatabase, Post, RelatedPost, Stats, StoredPassage, Topic)

__all__ = ["BACKENDS", "BackendUnavailable", "CannotWrite", "ExamplePost", "Hit", "IngestLocked",
           "KeptPassage", "MapPoint", "ModelInfo", "ModelMismatchError", "NewPassage", "NewPost",
           "NotADatabase", "Post", "RelatedPost", "Stats", "Storage", "StoredPassage", "Topic",
           "database_errors", "describe", "exists", "open_storage", "redacted", "same_target",
           "scrub", "shared_rate_limits", "vector_indexes", "writer_lock"]

# URL scheme -> "module:class". A target without a scheme is a SQLite file path. The class
# is called with the whole target (path or URL) and readonly=, create=; its static methods
# writer_lock(target) guard writers, exists(target) and describe(target) (no password) serve
# messages; VECTOR_INDEXES names its kinds of vector index, the default first.
BACKENDS = {
    "sqlite": "ragserver.storage.sqlite:SQLiteStorage",
    "postgresql": "ragserver.storage.postgres:PostgresStorage",
    "postgres": "ragserver.storage.postgres:PostgresStorage",
}


class Storage(Protocol):
    """What ragserver needs from a database, whichever holds it.

    Writes happen inside `transaction()`; every other method reads. Vectors are the
    source of truth; a vector index is derived from them and can be rebuilt.
    """

    kind: str  # the BACKENDS key
    VECTOR_INDEXES: tuple[str, ...]  # kinds of vector index it offers, the default first
    errors: tuple[type[BaseException], ...]  # what a failing database raises

    @property
    def location(self) -> str: ...  # where the data lives, for messages

    # -- connection --
    def close(self) -> None: ...
    def transaction(self) -> AbstractContextManager: ...
    def refresh(self) -> None: ...  # let a long-lived reader see other writers' commits

    # -- the model and the index --
    def get_schema_version(self) -> int | None: ...
    def get_model_info(self) -> ModelInfo | None: ...
    def set_model_info(self, info: ModelInfo) -> None: ...
    def check_model(self, info: ModelInfo) -> None: ...
    def index_kind(self) -> str: ...
    def set_vector_index(self, kind: str) -> None: ...
    def get_generation(self) -> int: ...
    def bump_generation(self) -> None: ...
    def count_vectors(self) -> int: ...
    def count_index_rows(self) -> int: ...
    def index_is_empty(self) -> bool: ...  # checked before every vector search: cheap
    def rebuild_index(self, commit_rows: int = 1000, on_batch: Callable[[int], None] | None = None,
                      vector_index: str | None = None) -> int: ...

    # -- posts --
    def get_post(self, source: str) -> Post | None: ...
    def find_post(self, *, source: str | None = None, url: str | None = None) -> Post | None: ...
    def list_posts(self) -> list[Post]: ...
    def sources_for_origin(self, origin: str) -> set[str]: ...
    def passages_for_post(self, post_id: int) -> list[StoredPassage]: ...
    def write_post(self, post: NewPost, passages: list[NewPassage | KeptPassage],
                   drop: list[int]) -> bool: ...
    def move_post(self, source: str, origin: str) -> None: ...
    def delete_post(self, post_id: int) -> int: ...
    def example_posts(self, n: int) -> list[ExamplePost]: ...

    # -- search --
    def search_index(self, vector: np.ndarray, k: int) -> list[Hit]: ...
    def search_keyword(self, text: str, k: int) -> list[Hit]: ...
    def passage_vectors(self, passage_ids: list[int]) -> dict[int, np.ndarray]: ...

    # -- related posts --
    def stale_post_vectors(self) -> tuple[list[int], list[int]]: ...
    def passage_vectors_of_posts(self, post_ids: list[int]
                                 ) -> Iterator[tuple[int, str, np.ndarray]]: ...
    def all_post_vectors(self) -> tuple[np.ndarray, np.ndarray]: ...
    def related_lists(self) -> dict[int, list[tuple[int, float]]]: ...
    def save_post_vectors(self, rows, gone: list[int]) -> None: ...
    def save_related(self, lists: dict[int, list[tuple[int, float]]], gone: list[int]) -> None: ...
    def related_for(self, post_id: int, n: int = 10) -> list[RelatedPost]: ...

    # -- topics and the map (ragserver.explore) --
    def get_map_state(self) -> dict: ...
    def map_version(self) -> str: ...  # changes whenever the drawn map may
    def topics(self) -> list[Topic]: ...
    def map_points(self) -> list[MapPoint]: ...
    def map_point(self, post_id: int) -> MapPoint | None: ...
    def map_near(self, point: MapPoint, n: int) -> list[MapPoint]: ...
    def map_hashes(self) -> dict[int, str]: ...
    def save_map(self, topics: list[Topic], rows, state: dict) -> None: ...
    def save_map_points(self, rows, gone: list[int]) -> None: ...
    def post_texts(self) -> dict[int, str]: ...

    # -- re-embedding with another model --
    def start_reembed(self, model_key: str) -> None: ...
    def passages_missing_reembed(self, limit: int
                                 ) -> list[tuple[int, str, tuple[str, ...], str]]: ...
    def save_reembed(self, model_key: str, rows) -> None: ...
    def switch_model(self, info: ModelInfo) -> None: ...

    # -- state --
    def get_stats(self) -> Stats: ...
    def extension_versions(self) -> dict: ...


def backend_of(target: str | Path) -> str:
    """The BACKENDS key for a database path or URL (a plain path is SQLite)."""
    text = str(target)
    scheme = text.split("://", 1)[0] if "://" in text else "sqlite"
    if scheme not in BACKENDS:
        raise ValueError(f"no storage backend for {scheme}:// (known: {', '.join(BACKENDS)})")
    return scheme


def redacted(target: str | Path) -> str:
    """The target for messages: a URL's password (postgresql://user:secret@host/db, or
    ?password=secret) replaced by ***."""
    text = str(target)
    if "://" not in text:
        return text
    parts = urlsplit(text)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    query = "&".join("password=***" if piece.startswith("password=") else piece
                     for piece in parts.query.split("&")) if parts.query else ""
    return parts._replace(netloc=netloc, query=query).geturl()


def _secrets(target: str | Path) -> list[str]:
    """The passwords a target's URL holds, as written and decoded."""
    text = str(target)
    if "://" not in text:
        return []
    parts = urlsplit(text)
    found = [parts.password or ""]
    found += [piece.partition("=")[2] for piece in parts.query.split("&")
              if piece.startswith("password=")]
    return [s for secret in found if secret for s in {secret, unquote(secret)}]


def scrub(message: str, *targets: str | Path) -> str:
    """A message with every password of these targets' URLs hidden (drivers' errors may
    quote the URL)."""
    for target in targets:
        message = message.replace(str(target), redacted(target))
        for secret in sorted(_secrets(target), key=len, reverse=True):
            message = message.replace(secret, "***")
    return message


def same_target(a: str | Path, b: str | Path) -> bool:
    """True when two targets name the same database: the same file for paths and sqlite://
    URLs (through links and relative paths), the same URL otherwise."""
    files = []
    for target in (str(a), str(b)):
        if "://" in target and not target.startswith("sqlite://"):
            return str(a) == str(b)
        files.append(Path(target.removeprefix("sqlite://")).expanduser())
    if all(f.exists() for f in files):
        return os.path.samefile(*files)
    return files[0].resolve() == files[1].resolve()


def _backend_class(name: str):
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def exists(target: str | Path) -> bool:
    """False when the target certainly holds no database yet (a missing SQLite file)."""
    return _backend_class(backend_of(target)).exists(str(target))


def describe(target: str | Path) -> str:
    """The target for messages: a path, or a URL without its password."""
    return _backend_class(backend_of(target)).describe(str(target))


def vector_indexes(target: str | Path) -> tuple[str, ...]:
    """The kinds of vector index the target's backend offers, its default first."""
    return _backend_class(backend_of(target)).VECTOR_INDEXES


def shared_rate_limits(target: str | Path):
    """Rate limit buckets shared by every web worker of this database (an object with
    take(name, key, per_minute, spend) -> seconds to wait, `spend` being the bucket
    arithmetic), or None where each worker counts alone."""
    return _backend_class(backend_of(target)).shared_rate_limits(str(target))


def writer_lock(target: str | Path) -> AbstractContextManager:
    """The lock an ingest or reindex holds while it writes; raises IngestLocked at once when
    another writer holds it, CannotWrite when the lock cannot be taken at all."""
    return _backend_class(backend_of(target)).writer_lock(str(target))


def open_storage(target: str | Path, *, readonly: bool = False, create: bool = False) -> Storage:
    """Open the database at `target`; `create` makes the schema of a new one.

    Raises NotADatabase for a target that holds something else, and the backend's
    own errors (see `database_errors`) when it cannot be opened at all.
    """
    return _backend_class(backend_of(target))(str(target), readonly=readonly, create=create)


def database_errors() -> tuple[type[BaseException], ...]:
    """Exception classes a failing or foreign database raises, for every backend that loads."""
    errors: list[type[BaseException]] = [NotADatabase]
    for name in BACKENDS:
        try:
            errors += _backend_class(name).errors
        except ImportError:  # a backend whose driver is not installed raises nothing
            continue
    return tuple(errors)
