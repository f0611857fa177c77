"""The SQLite backend: one database file, sqlite-vss (or sqlite-vec) for vectors, FTS5 for words.

All of its SQL lives here. Vectors are stored once, in the llm-compatible
`embeddings` table, as little-endian float32 blobs. The vector index (sqlite-vss
`vss_passages` by default, or sqlite-vec `vec_passages`) is derived from them: it
can be dropped and rebuilt at any time (`rebuild_index`).
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from ..terms import search_terms
from .records import Hit, KeptPassage, ModelInfo, NewPassage, NewPost, NotADatabase, Stats
from .sql import SQLStorage
from .sqlite_connection import (COLLECTION, connect, database_errors, init_schema, transaction,
                                writer_lock)


@dataclass(frozen=True)
class VectorIndex:
    """The SQL of one kind of vector index; `meta.vector_index` says which a database uses."""
    kind: str
    table: str
    create: str  # {dimension} is filled in
    count: str
    search: str  # parameters: query vector blob, k
    size: str
    cosine_from_distance: float  # cosine = 1 - distance * this

    def score(self, distance: float) -> float:
        return 1.0 - float(distance) * self.cosine_from_distance


INDEXES = {
    # sqlite-vss (Faiss): squared L2 distance; for unit vectors cosine = 1 - d / 2.
    "vss": VectorIndex(
        "vss", "vss_passages",
        "CREATE VIRTUAL TABLE IF NOT EXISTS vss_passages USING vss0(embedding({dimension}))",
        "SELECT count(*) FROM vss_passages_data",
        "SELECT rowid, distance FROM vss_passages "
        "WHERE vss_search(embedding, vss_search_params(?, ?))",
        "SELECT coalesce(sum(length(idx)), 0) FROM vss_passages_index", 0.5),
    # sqlite-vec: an exact scan over chunked vectors, cosine distance.
    "vec": VectorIndex(
        "vec", "vec_passages",
        "CREATE VIRTUAL TABLE IF NOT EXISTS vec_passages USING "
        "vec0(embedding float[{dimension}] distance_metric=cosine)",
        "SELECT count(*) FROM vec_passages_rowids",
        "SELECT rowid, distance FROM vec_passages WHERE embedding MATCH ? AND k = ?",
        "SELECT coalesce(sum(length(vectors)), 0) FROM vec_passages_vector_chunks00", 1.0),
}




def vector_to_blob(vector) -> bytes:
    """Little-endian float32 bytes, the layout llm uses."""
    return np.asarray(vector, dtype="<f4").tobytes()


def blob_to_vector(blob: bytes) -> np.ndarray:
    """Inverse of vector_to_blob."""
    return np.frombuffer(blob, dtype="<f4")


def fts_query(text: str) -> str:
    """A safe FTS5 query from free text: every search term quoted, any may match."""
    return " OR ".join(f'"{w}"' for w in search_terms(text))


def _file(target: str | Path) -> Path:
    """The database file of a path or a sqlite:// URL."""
    return Path(str(target).removeprefix("sqlite://"))


def _metadata(post: NewPost, position: int, heading_path, anchor: str) -> str:
    return json.dumps({"source": post.source, "title": post.title, "url": post.url,
                       "anchor": anchor, "headings": list(heading_path), "position": position})


class SQLiteStorage(SQLStorage):
    """One SQLite database file: posts, passages, vectors, their index and related posts.

    A read-only storage is a reader: sqlite-vss loads its index when a connection
    first touches it and never sees later writes from other connections, so every
    index write bumps a generation counter in `meta`, and `refresh()` reconnects
    when the counter moved and the index is sqlite-vss (sqlite-vec reads ordinary
    tables: nothing goes stale).
    """

    kind = "sqlite"
    errors = database_errors()
    VECTOR_INDEXES = tuple(INDEXES)

    def __init__(self, path: str | Path, *, readonly: bool = False, create: bool = False):
        self.path = _file(path)
        self.readonly = readonly
        self.reopened = 0
        self._collection_id: int | None = None
        self.conn = connect(self.path, readonly=readonly)
        try:
            if not create and self.get_schema_version() is None:
                raise NotADatabase(f"{self.path} is not a ragserver database")
            if not readonly:  # tables added since the file was made (IF NOT EXISTS)
                init_schema(self.conn)
            self._generation = self.get_generation()
        except BaseException:
            self.conn.close()
            raise

    def _sql(self, sql: str, parameters=()):
        return self.conn.execute(sql, parameters)

    def _sql_many(self, sql: str, rows) -> None:
        self.conn.executemany(sql, rows)

    def _vector_param(self, vector) -> bytes:
        return vector_to_blob(vector)

    @staticmethod
    def writer_lock(path: str | Path):
        """The lock every writer of this database holds (a lock file beside it)."""
        return writer_lock(_file(path))

    @staticmethod
    def shared_rate_limits(path: str | Path) -> None:
        """None: one machine serves a SQLite file, and its workers count in their own memory."""
        return None

    @staticmethod
    def exists(path: str | Path) -> bool:
        """True when the database file is there."""
        return _file(path).exists()

    @staticmethod
    def describe(path: str | Path) -> str:
        """The file's path."""
        return str(_file(path))

    @property
    def location(self) -> str:
        """Where the data lives, for messages."""
        return str(self.path)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    @contextmanager
    def transaction(self):
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK if anything escapes."""
        with transaction(self.conn):
            yield self

    def refresh(self) -> None:
        """Reopen the connection if a sqlite-vss index changed since it was opened."""
        generation = self.get_generation()
        if generation == self._generation:
            return
        if self.vector_index().kind == "vss":
            self.conn.close()
            self.conn = connect(self.path, readonly=self.readonly)
            generation = self.get_generation()
            self.reopened += 1
        self._generation = generation

    # -- meta and model ---------------------------------------------------------

    def get_schema_version(self) -> int | None:
        """The schema version, or None when this is not (yet) a ragserver database."""
        if self._sql("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is None:
            return None
        value = self.get_meta("schema_version")
        return None if value is None else int(value)

    def set_model_info(self, info: ModelInfo) -> None:
        """Record the model (in the caller's transaction) and create the index for its dimension."""
        self._record_model(info)
        self._sql("UPDATE collections SET model = ? WHERE name = ?", (info.name, COLLECTION))
        self.create_index(info.dimension)

    def bump_generation(self) -> None:
        """Tell readers the vector index changed (sqlite-vss readers must reopen to see it)."""
        self._sql("INSERT INTO meta(key, value) VALUES ('index_generation', '1') "
                  "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1")

    def _has_map(self) -> bool:
        """False for a file made before topics existed and not written since (its next
        writer creates the tables)."""
        return self._sql("SELECT 1 FROM sqlite_master WHERE name = 'post_map'").fetchone() \
            is not None

    # -- posts and passages -----------------------------------------------------

    def write_post(self, post: NewPost, passages: list[NewPassage | KeptPassage],
                   drop: list[int]) -> bool:
        """Write a post with its passages (new ones with their vectors, kept ones moved into
        place) and delete its passages in `drop`; True when the vector index changed."""
        post_id = self.save_post(post)
        self.delete_passages(drop)
        collection = self.collection_id()
        added = False
        for passage in passages:
            if isinstance(passage, KeptPassage):
                self._move_passage(collection, post, passage)
            else:
                self._insert_passage(collection, post, post_id, passage)
                added = True
        return added or bool(drop)

    def save_post(self, post: NewPost) -> int:
        """Insert or update a post row (no passages); returns its id."""
        source, origin, title, url, date, tags, content_hash = (
            post.source, post.origin, post.title, post.url, post.date, post.tags,
            post.content_hash)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._sql(
            "INSERT INTO posts(source, origin, title, url, date, tags, content_hash, ingested_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(source) DO UPDATE SET "
            "origin = excluded.origin, title = excluded.title, url = excluded.url, "
            "date = excluded.date, tags = excluded.tags, content_hash = excluded.content_hash, "
            "ingested_at = excluded.ingested_at",
            (source, origin, title, url, date, json.dumps(list(tags)), content_hash, now))
        return self._sql("SELECT id FROM posts WHERE source = ?", (source,)).fetchone()[0]

    def _insert_passage(self, collection_id: int, post: NewPost, post_id: int,
                        passage: NewPassage) -> int:
        """Write one passage: its row, its vector, its FTS row and its index row."""
        cur = self._sql(
            "INSERT INTO passages(post_id, position, heading_path, anchor, text, content_hash) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (post_id, passage.position, json.dumps(list(passage.heading_path)), passage.anchor,
             passage.text, passage.content_hash))
        passage_id = cur.lastrowid
        blob = vector_to_blob(passage.vector)
        self._sql(
            "INSERT INTO embeddings(collection_id, id, embedding, content, content_hash, metadata, "
            "updated) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (collection_id, str(passage_id), blob, passage.text,
             hashlib.md5(passage.text.encode("utf-8")).digest(),
             _metadata(post, passage.position, passage.heading_path, passage.anchor),
             int(time.time())))
        self._sql("INSERT INTO passages_fts(rowid, title, headings, text) VALUES (?, ?, ?, ?)",
                  (passage_id, post.title, " ".join(passage.heading_path), passage.text))
        self.insert_index_rows([(passage_id, blob)])
        return passage_id

    def _move_passage(self, collection_id: int, post: NewPost, kept: KeptPassage) -> None:
        """Update where an unchanged passage sits in its post (no re-embedding, no index write)."""
        self._sql("UPDATE passages SET position = ?, anchor = ? WHERE id = ?",
                          (kept.position, kept.anchor, kept.id))
        self._sql(
            "UPDATE embeddings SET metadata = ? WHERE collection_id = ? AND id = ?",
            (_metadata(post, kept.position, kept.heading_path, kept.anchor), collection_id,
             str(kept.id)))

    def delete_passages(self, passage_ids) -> None:
        """Delete passages with their vectors, FTS rows and index rows."""
        collection_id = self.collection_id()
        index_table = self.vector_index().table
        for passage_id in passage_ids:
            self._sql("DELETE FROM passages WHERE id = ?", (passage_id,))
            self._sql("DELETE FROM embeddings WHERE collection_id = ? AND id = ?",
                      (collection_id, str(passage_id)))
            self._sql("DELETE FROM passages_fts WHERE rowid = ?", (passage_id,))
            self._sql(f"DELETE FROM {index_table} WHERE rowid = ?", (passage_id,))

    def delete_post(self, post_id: int) -> int:
        """Delete a post and everything derived from it; returns the passages removed."""
        ids = [r[0] for r in self._sql("SELECT id FROM passages WHERE post_id = ?", (post_id,))]
        self.delete_passages(ids)
        self._sql("DELETE FROM posts WHERE id = ?", (post_id,))
        return len(ids)

    def collection_id(self) -> int:
        """Row id of the passages collection in the llm-compatible tables (made with the
        schema and never changed: looked up once, not on every write and search)."""
        if self._collection_id is None:
            self._collection_id = self._sql("SELECT id FROM collections WHERE name = ?",
                                            (COLLECTION,)).fetchone()[0]
        return self._collection_id

    # -- vector index -----------------------------------------------------------

    def vector_index(self) -> VectorIndex:
        """The kind of vector index this database uses (sqlite-vss unless it chose otherwise)."""
        return INDEXES[self.get_meta("vector_index", "vss")]

    def index_kind(self) -> str:
        """The kind of vector index in use: vss or vec."""
        return self.vector_index().kind

    def set_vector_index(self, kind: str) -> None:
        """Choose the kind of index (in the caller's transaction; the old one must be dropped)."""
        if kind not in INDEXES:
            raise ValueError(f"vector index must be one of {', '.join(INDEXES)}, not {kind!r}")
        self.set_meta("vector_index", kind)

    def index_exists(self) -> bool:
        """True when the database's vector index table has been created."""
        return self.index_exists_of(self.vector_index().kind)

    def index_exists_of(self, kind: str) -> bool:
        """True when a vector index of this kind exists in the database."""
        return self._sql("SELECT 1 FROM sqlite_master WHERE name = ?",
                         (INDEXES[kind].table,)).fetchone() is not None

    def create_index(self, dimension: int) -> None:
        """Create the vector index for vectors of this dimension, if missing."""
        self._sql(self.vector_index().create.format(dimension=int(dimension)))

    def drop_index(self) -> None:
        """Drop the vector index, of either kind (it is rebuilt from the embeddings table)."""
        for index in INDEXES.values():
            self._sql(f"DROP TABLE IF EXISTS {index.table}")

    def count_vectors(self) -> int:
        """Vectors in the source-of-truth table."""
        return self._sql("SELECT count(*) FROM embeddings WHERE collection_id = ?",
                         (self.collection_id(),)).fetchone()[0]

    def count_index_rows(self) -> int:
        """Rows in the vector index (0 when it does not exist)."""
        if not self.index_exists():
            return 0
        return self._sql(self.vector_index().count).fetchone()[0]

    def index_is_empty(self) -> bool:
        """True when a search of the vector index can find nothing (sqlite-vss must not be asked)."""
        return self.count_index_rows() == 0

    def iter_vectors(self, batch: int = 1000):
        """Yield lists of (passage id, blob) from the embeddings table, in id order."""
        cid = self.collection_id()
        last = -1
        while True:
            rows = self._sql(
                "SELECT CAST(id AS INTEGER) AS pid, embedding FROM embeddings "
                "WHERE collection_id = ? AND CAST(id AS INTEGER) > ? ORDER BY pid LIMIT ?",
                (cid, last, batch)).fetchall()
            if not rows:
                return
            yield rows
            last = rows[-1][0]

    def insert_index_rows(self, rows) -> None:
        """Add (passage id, blob) rows to the vector index."""
        self._sql_many(f"INSERT INTO {self.vector_index().table}(rowid, embedding) VALUES (?, ?)",
                       rows)

    def search_index(self, vector, k: int) -> list[Hit]:
        """Nearest passages to a normalised query vector, best first; [] for an empty index.

        sqlite-vss kills the process when asked to search an empty index, so the row
        count is checked first.
        """
        if k <= 0 or self.count_index_rows() == 0:
            return []
        index = self.vector_index()
        rows = self._sql(index.search, (vector_to_blob(vector), int(k))).fetchall()
        return self._hits({rowid: index.score(distance) for rowid, distance in rows},
                     similarity=True)

    def passage_vectors(self, passage_ids: list[int]) -> dict[int, np.ndarray]:
        """The stored vectors of some passages, by passage id."""
        if not passage_ids:
            return {}
        rows = self._sql(
            "SELECT CAST(id AS INTEGER), embedding FROM embeddings WHERE collection_id = ? "
            f"AND id IN ({','.join('?' * len(passage_ids))})",
            [self.collection_id(), *map(str, passage_ids)]).fetchall()
        return {pid: blob_to_vector(blob) for pid, blob in rows}

    def extension_versions(self) -> dict:
        """Versions of SQLite and the vector extensions loaded into this connection."""
        sqlite, vss, vec = self._sql(
            "SELECT sqlite_version(), vss_version(), vec_version()").fetchone()
        return {"sqlite": sqlite, "sqlite-vss": vss, "sqlite-vec": vec}

    def get_stats(self) -> Stats:
        """Counts and sizes for `ragserver stats` and health checks."""
        index_bytes = 0
        if self.index_exists():
            index_bytes = self._sql(self.vector_index().size).fetchone()[0]
        page_size = self._sql("PRAGMA page_size").fetchone()[0]
        page_count = self._sql("PRAGMA page_count").fetchone()[0]
        return Stats(
            posts=self._sql("SELECT count(*) FROM posts").fetchone()[0],
            passages=self._sql("SELECT count(*) FROM passages").fetchone()[0],
            vectors=self.count_vectors(),
            index_rows=self.count_index_rows(),
            index_bytes=index_bytes,
            db_bytes=page_size * page_count,
            model=self.get_model_info(),
            generation=self.get_generation(),
            index_state=self.get_meta("index_state", "ok"),
            vector_index=self.vector_index().kind,
        )

    # -- related posts ----------------------------------------------------------

    def passage_vectors_of_posts(self, post_ids: list[int]):
        """Yield (post id, content hash, matrix of its passage vectors) for posts that have any."""
        cid = self.collection_id()
        for start in range(0, len(post_ids), 500):
            chunk = post_ids[start:start + 500]
            rows = self._sql(
                "SELECT o.id, o.content_hash, e.embedding FROM posts o "
                "JOIN passages p ON p.post_id = o.id "
                "JOIN embeddings e ON e.collection_id = ? AND e.id = CAST(p.id AS TEXT) "
                f"WHERE o.id IN ({','.join('?' * len(chunk))}) ORDER BY o.id, p.position",
                [cid, *chunk]).fetchall()
            by_post: dict[int, tuple[str, list]] = {}
            for post_id, digest, blob in rows:
                by_post.setdefault(post_id, (digest, []))[1].append(blob_to_vector(blob))
            for post_id, (digest, vectors) in by_post.items():
                yield post_id, digest, np.stack(vectors)

    def all_post_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(post ids, matrix of post vectors), in id order."""
        rows = self._sql("SELECT post_id, embedding FROM post_vectors ORDER BY post_id").fetchall()
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        return (np.array([r[0] for r in rows], np.int64),
                np.stack([blob_to_vector(r[1]) for r in rows]))

    def forget_post_vectors(self) -> None:
        """Mark every post vector stale (after the passages were re-embedded with another model)."""
        self._sql("DELETE FROM post_vectors")

    # -- re-embedding with another model ----------------------------------------

    def start_reembed(self, model_key: str) -> None:
        """Side table for a new model's vectors; keeps an interrupted run's rows for the same model."""
        self._sql("CREATE TABLE IF NOT EXISTS reembed (passage_id INTEGER PRIMARY KEY, "
                  "model TEXT NOT NULL, content_hash TEXT NOT NULL, embedding BLOB NOT NULL)")
        self._sql("DELETE FROM reembed WHERE model != ?", (model_key,))

    def apply_reembed(self) -> None:
        """Swap the new vectors and passage hashes in, then drop the side table."""
        cid = self.collection_id()
        self._sql(
            "UPDATE embeddings SET updated = ?, embedding = (SELECT r.embedding FROM reembed r "
            "WHERE r.passage_id = CAST(embeddings.id AS INTEGER)) WHERE collection_id = ?",
            (int(time.time()), cid))
        self._sql("UPDATE passages SET content_hash = (SELECT r.content_hash FROM reembed r "
                  "WHERE r.passage_id = passages.id)")
        self._sql("DROP TABLE reembed")

    # -- whole-index maintenance ------------------------------------------------

    def rebuild_index(self, commit_rows: int = 1000,
                      on_batch: Callable[[int], None] | None = None,
                      vector_index: str | None = None) -> int:
        """Drop the vector index and rebuild it (as `vector_index`, if given) from the stored
        vectors, in commits of `commit_rows`; returns rows indexed."""
        info = self.get_model_info()
        if info is None:
            return 0
        with self.transaction():
            self.drop_index()
            if vector_index:
                self.set_vector_index(vector_index)
            self.create_index(info.dimension)
            self.set_meta("index_state", "rebuilding")
            self.bump_generation()
        total = 0
        for rows in self.iter_vectors(batch=commit_rows):
            with self.transaction():
                self.insert_index_rows(rows)
                self.bump_generation()
            total += len(rows)
            if on_batch:
                on_batch(total)
        with self.transaction():
            self.set_meta("index_state", "ok")
        return total

    def switch_model(self, info: ModelInfo) -> None:
        """Swap the re-embedded vectors in and record their model (inside the caller's
        transaction); the vector index is dropped and must be rebuilt."""
        self.apply_reembed()
        self.drop_index()
        self.set_model_info(info)
        self.forget_post_vectors()

    # -- keyword search ---------------------------------------------------------

    def search_keyword(self, text: str, k: int) -> list[Hit]:
        """Passages ranked by FTS5 BM25 (title and headings weigh double), best first."""
        query = fts_query(text)
        if not query or k <= 0:
            return []
        rows = self._sql(
            "SELECT rowid, bm25(passages_fts, 2.0, 2.0, 1.0) AS rank FROM passages_fts "
            "WHERE passages_fts MATCH ? ORDER BY rank LIMIT ?", (query, int(k))).fetchall()
        # bm25() is lower-is-better and unbounded; report its negation as the score.
        return self._hits({rowid: -float(rank) for rowid, rank in rows})
