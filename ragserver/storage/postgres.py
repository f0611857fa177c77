"""The PostgreSQL backend: pgvector HNSW for vectors, PostgreSQL full-text search for words.

All of its SQL lives here. A passage's row holds its vector (the source of truth) and
its words; the HNSW index is derived from the vectors and can be dropped and rebuilt at
any time (`rebuild_index`). Every read runs in autocommit, so a reader sees each commit
as soon as it is made: no generation check, no reopening. One database serves any
number of web workers and machines.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from typing import Callable

import numpy as np

from ..terms import search_terms
from . import redacted
from .postgres_connection import (SCHEMA_VERSION, connect, migrate, register_vectors,
                                  schema_version, writer_lock)
from .records import Hit, KeptPassage, ModelInfo, NewPassage, NewPost, NotADatabase, Stats
from .sql import SQLStorage

INDEX = "passages_embedding"
# Candidates the HNSW graph search keeps (pgvector's default is 40), by the number of
# passages, unless the database, role or URL sets hnsw.ef_search itself. bench_scale
# (docs/benchmarks.md) measured recall@10 against exact search on real-passage-derived
# vectors: 100 gives 0.970 at 200k but 0.887 at 1M, where 400 gives 0.963 (a top-10 query
# in about 5 ms). Below that size 400 would make PostgreSQL plan a sequential scan and sort
# instead of the index (20k passages: 66 ms a search against 5 ms at 100).
EF_SEARCH = ((500_000, 400), (0, 100))  # (from this many passages, ef_search), largest first
# Title and headings (A) weigh double the text (B), as in the SQLite backend's BM25.
RANK_WEIGHTS = "{0, 0, 0.5, 1.0}"
TEXT_SEARCH_CONFIG = "english"  # Snowball English stemming, like FTS5's porter tokenizer
WORDS = (f"setweight(to_tsvector('{TEXT_SEARCH_CONFIG}', %s), 'A') || "
         f"setweight(to_tsvector('{TEXT_SEARCH_CONFIG}', %s), 'A') || "
         f"setweight(to_tsvector('{TEXT_SEARCH_CONFIG}', %s), 'B')")

def _errors() -> tuple[type[BaseException], ...]:
    try:
        import psycopg
    except ImportError:
        return ()
    return (psycopg.Error,)


def _vector(vector) -> np.ndarray:
    """float32 numpy from a numpy array, or from pgvector's Vector as a column reads."""
    if hasattr(vector, "to_numpy"):
        vector = vector.to_numpy()
    return np.asarray(vector, dtype=np.float32)


def tsquery_text(text: str) -> str:
    """websearch_to_tsquery input from free text: every search term, any may match."""
    return " or ".join(search_terms(text))


class PostgresStorage(SQLStorage):
    """One PostgreSQL database: posts, passages with their vectors and words, related posts.

    A read-only storage opens its session read-only, so nothing a web request does can
    change the posts.
    """

    kind = "postgresql"
    errors = _errors()
    VECTOR_INDEXES = ("hnsw",)

    def __init__(self, url: str, *, readonly: bool = False, create: bool = False):
        self.url = url
        self.readonly = readonly
        self.conn = connect(url, readonly=readonly)
        try:
            if create and not readonly:
                migrate(self.conn, url)
            version = schema_version(self.conn)
            if version is None:
                raise NotADatabase(f"{redacted(url)} holds no ragserver database")
            if version < SCHEMA_VERSION:
                if readonly:
                    raise NotADatabase(
                        f"{redacted(url)} has schema version {version}, older than this ragserver's "
                        f"{SCHEMA_VERSION}: any writing command (ingest, reindex) migrates it")
                migrate(self.conn, url)
            register_vectors(self.conn)
            self._tune_search()
        except BaseException:
            self.conn.close()
            raise

    def _tune_search(self) -> None:
        """Use EF_SEARCH, and exact order past it, unless the database or role set their own."""
        self._sql("SELECT '[1]'::vector")  # loads pgvector, which defines its settings
        sources = dict(self._sql("SELECT name, source FROM pg_settings WHERE name IN "
                                 "('hnsw.ef_search', 'hnsw.iterative_scan')").fetchall())
        if sources.get("hnsw.ef_search") == "default":
            passages = self._sql("SELECT greatest(reltuples, 0) FROM pg_class "
                                 "WHERE oid = 'passages'::regclass").fetchone()[0]
            ef_search = next(ef for least, ef in EF_SEARCH if passages >= least)
            self._sql(f"SET hnsw.ef_search = {int(ef_search)}")
        if sources.get("hnsw.iterative_scan") == "default":  # pgvector 0.8 and newer
            # A search for more than ef_search passages goes on through the graph.
            self._sql("SET hnsw.iterative_scan = strict_order")

    def _sql(self, sql: str, parameters=None):
        return self.conn.execute(sql.replace("?", "%s"), parameters)

    def _sql_many(self, sql: str, rows) -> None:
        rows = list(rows)
        if rows:
            with self.conn.cursor() as cur:
                cur.executemany(sql.replace("?", "%s"), rows)

    def _vector_param(self, vector) -> np.ndarray:
        return _vector(vector)

    @staticmethod
    def writer_lock(url: str):
        """The lock every writer of this database holds (a PostgreSQL advisory lock)."""
        return writer_lock(url)

    @staticmethod
    def shared_rate_limits(url: str) -> "SharedRateLimits":
        """Rate limit buckets every web worker and machine on this database counts against."""
        return SharedRateLimits(url)

    @staticmethod
    def exists(url: str) -> bool:
        """A server database is there to connect to; what it holds shows when it is opened."""
        return True

    @staticmethod
    def describe(url: str) -> str:
        """The URL without its password."""
        return redacted(url)

    @property
    def location(self) -> str:
        """Where the data lives, for messages (no password)."""
        return redacted(self.url)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    @contextmanager
    def transaction(self):
        """BEGIN ... COMMIT, or ROLLBACK if anything escapes."""
        with self.conn.transaction():
            yield self

    def refresh(self) -> None:
        """Nothing to do: every read sees the latest commit."""

    # -- meta and model ---------------------------------------------------------

    def get_schema_version(self) -> int | None:
        """The last migration applied, or None when this is not a ragserver database."""
        return schema_version(self.conn)

    def set_model_info(self, info: ModelInfo) -> None:
        """Record the model (in the caller's transaction) and fix the vectors' dimension; a new
        database gets its (empty) HNSW index, which then grows with every insert."""
        self._record_model(info)
        dimension = int(info.dimension)
        for table in ("passages", "post_vectors"):
            self._sql(f"ALTER TABLE {table} ALTER COLUMN embedding TYPE vector({dimension})")
        if self.count_vectors() == 0:
            self.create_index()

    def bump_generation(self) -> None:
        """Count one more change to the vectors."""
        self._sql("INSERT INTO meta (key, value) VALUES ('index_generation', '1') ON CONFLICT "
                  "(key) DO UPDATE SET value = (meta.value::bigint + 1)::text")

    # -- posts and passages -----------------------------------------------------

    def write_post(self, post: NewPost, passages: list[NewPassage | KeptPassage],
                   drop: list[int]) -> bool:
        """Write a post with its passages (new ones with their vectors, kept ones moved into
        place) and delete its passages in `drop`; True when the vectors changed."""
        post_id = self._save_post(post)
        self.delete_passages(drop)
        kept = [p for p in passages if isinstance(p, KeptPassage)]
        new = [p for p in passages if not isinstance(p, KeptPassage)]
        self._sql_many("UPDATE passages SET position = %s, anchor = %s WHERE id = %s",
                       [(k.position, k.anchor, k.id) for k in kept])
        self._sql_many(
            "INSERT INTO passages (post_id, position, heading_path, anchor, text, content_hash, "
            f"words, embedding) VALUES (%s, %s, %s, %s, %s, %s, {WORDS}, %s)",
            [(post_id, p.position, json.dumps(list(p.heading_path)), p.anchor, p.text,
              p.content_hash, post.title, " ".join(p.heading_path), p.text, _vector(p.vector))
             for p in new])
        return bool(new) or bool(drop)

    def _save_post(self, post: NewPost) -> int:
        """Insert or update a post row (no passages); returns its id."""
        return self._sql(
            "INSERT INTO posts (source, origin, title, url, date, tags, content_hash, ingested_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, now()) ON CONFLICT (source) DO UPDATE SET "
            "origin = excluded.origin, title = excluded.title, url = excluded.url, "
            "date = excluded.date, tags = excluded.tags, content_hash = excluded.content_hash, "
            "ingested_at = excluded.ingested_at RETURNING id",
            (post.source, post.origin, post.title, post.url, post.date,
             json.dumps(list(post.tags)), post.content_hash)).fetchone()[0]

    def delete_passages(self, passage_ids) -> None:
        """Delete passages (their vectors and words go with their rows)."""
        ids = list(passage_ids)
        if ids:
            self._sql("DELETE FROM passages WHERE id = ANY(%s)", (ids,))

    def delete_post(self, post_id: int) -> int:
        """Delete a post and its passages; returns the passages removed."""
        removed = self._sql("DELETE FROM passages WHERE post_id = %s", (post_id,)).rowcount
        self._sql("DELETE FROM posts WHERE id = %s", (post_id,))
        return removed

    # -- the vector index -------------------------------------------------------

    def index_kind(self) -> str:
        """The kind of vector index: always HNSW here."""
        return "hnsw"

    def set_vector_index(self, kind: str) -> None:
        """Choose the kind of index: PostgreSQL has one, HNSW."""
        if kind not in self.VECTOR_INDEXES:
            raise ValueError(f"vector index must be one of {', '.join(self.VECTOR_INDEXES)} "
                             f"with PostgreSQL, not {kind!r}")

    def index_exists(self) -> bool:
        """True when a valid HNSW index is there (a killed build leaves none, or an invalid one)."""
        row = self._sql("SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = "
                        "i.indexrelid WHERE c.relname = %s AND c.relnamespace = "
                        "current_schema()::regnamespace", (INDEX,)).fetchone()
        return bool(row and row[0])

    def create_index(self) -> None:
        """Build the HNSW index over the stored vectors (cosine distance), if missing."""
        self._sql(f"CREATE INDEX IF NOT EXISTS {INDEX} ON passages "
                  "USING hnsw (embedding vector_cosine_ops)")

    def drop_index(self) -> None:
        """Drop the HNSW index (searches scan every vector until it is rebuilt)."""
        self._sql(f"DROP INDEX IF EXISTS {INDEX}")

    def count_vectors(self) -> int:
        """Stored vectors: one per passage."""
        return self._sql("SELECT count(*) FROM passages").fetchone()[0]

    def count_index_rows(self) -> int:
        """Vectors the index covers: all of them while a valid index exists, else 0."""
        return self.count_vectors() if self.index_exists() else 0

    def index_is_empty(self) -> bool:
        """True when there is no vector to find. Without its HNSW index (while `reindex`
        builds it) a search still answers, by scanning every vector."""
        return not self._sql("SELECT EXISTS (SELECT 1 FROM passages)").fetchone()[0]

    def search_index(self, vector, k: int) -> list[Hit]:
        """Nearest passages to a normalised query vector by cosine distance, best first."""
        if k <= 0:
            return []
        rows = self._sql(
            "SELECT id, embedding <=> %s AS distance FROM passages ORDER BY distance LIMIT %s",
            (_vector(vector), int(k))).fetchall()
        return self._hits({pid: 1.0 - float(distance) for pid, distance in rows},
                          similarity=True)

    def passage_vectors(self, passage_ids: list[int]) -> dict[int, np.ndarray]:
        """The stored vectors of some passages, by passage id."""
        if not passage_ids:
            return {}
        rows = self._sql("SELECT id, embedding FROM passages WHERE id = ANY(%s)",
                         (list(passage_ids),)).fetchall()
        return {pid: _vector(v) for pid, v in rows}

    def search_keyword(self, text: str, k: int) -> list[Hit]:
        """Passages ranked by full-text rank (title and headings weigh double), best first."""
        query = tsquery_text(text)
        if not query or k <= 0:
            return []
        rows = self._sql(
            f"SELECT p.id, ts_rank('{RANK_WEIGHTS}', p.words, q) AS rank "
            f"FROM passages p, websearch_to_tsquery('{TEXT_SEARCH_CONFIG}', %s) q "
            "WHERE p.words @@ q ORDER BY rank DESC, p.id LIMIT %s", (query, int(k))).fetchall()
        return self._hits({pid: float(rank) for pid, rank in rows})

    def extension_versions(self) -> dict:
        """Versions of PostgreSQL and pgvector."""
        server, vector = self._sql(
            "SELECT current_setting('server_version'), "
            "(SELECT extversion FROM pg_extension WHERE extname = 'vector')").fetchone()
        return {"postgresql": server, "pgvector": vector}

    def get_stats(self) -> Stats:
        """Counts and sizes for `ragserver stats` and health checks."""
        exists = self.index_exists()
        index_bytes = self._sql("SELECT pg_relation_size(%s::regclass)",
                                (INDEX,)).fetchone()[0] if exists else 0
        vectors = self.count_vectors()
        return Stats(
            posts=self._sql("SELECT count(*) FROM posts").fetchone()[0],
            passages=vectors,
            vectors=vectors,
            index_rows=vectors if exists else 0,
            index_bytes=index_bytes,
            db_bytes=self._sql("SELECT pg_database_size(current_database())").fetchone()[0],
            model=self.get_model_info(),
            generation=self.get_generation(),
            index_state=self.get_meta("index_state", "ok"),
            vector_index="hnsw",
        )

    # -- related posts ----------------------------------------------------------

    def passage_vectors_of_posts(self, post_ids: list[int]):
        """Yield (post id, content hash, matrix of its passage vectors) for posts that have any."""
        for start in range(0, len(post_ids), 500):
            rows = self._sql(
                "SELECT o.id, o.content_hash, p.embedding FROM posts o "
                "JOIN passages p ON p.post_id = o.id WHERE o.id = ANY(%s) "
                "ORDER BY o.id, p.position", (post_ids[start:start + 500],)).fetchall()
            by_post: dict[int, tuple[str, list]] = {}
            for post_id, digest, vector in rows:
                by_post.setdefault(post_id, (digest, []))[1].append(_vector(vector))
            for post_id, (digest, vectors) in by_post.items():
                yield post_id, digest, np.stack(vectors)

    def all_post_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(post ids, matrix of post vectors), in id order."""
        rows = self._sql("SELECT post_id, embedding FROM post_vectors ORDER BY post_id").fetchall()
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        return (np.array([r[0] for r in rows], np.int64), np.stack([_vector(r[1]) for r in rows]))

    # -- re-embedding with another model ----------------------------------------

    def start_reembed(self, model_key: str) -> None:
        """Side table for a new model's vectors; keeps an interrupted run's rows for the same model."""
        self._sql("CREATE TABLE IF NOT EXISTS reembed (passage_id BIGINT PRIMARY KEY, "
                  "model TEXT NOT NULL, content_hash TEXT NOT NULL, embedding VECTOR NOT NULL)")
        self._sql("DELETE FROM reembed WHERE model != %s", (model_key,))

    def switch_model(self, info: ModelInfo) -> None:
        """Swap the re-embedded vectors in and record their model (inside the caller's
        transaction); the HNSW index is dropped and must be rebuilt."""
        self.drop_index()
        for table in ("passages", "post_vectors"):
            self._sql(f"ALTER TABLE {table} ALTER COLUMN embedding TYPE vector")
        self._sql("UPDATE passages p SET embedding = r.embedding, content_hash = r.content_hash "
                  "FROM reembed r WHERE r.passage_id = p.id")
        self._sql("DROP TABLE reembed")
        self._sql("DELETE FROM post_vectors")  # every post vector is stale now
        self.set_model_info(info)

    # -- whole-index maintenance ------------------------------------------------

    def rebuild_index(self, commit_rows: int = 1000,
                      on_batch: Callable[[int], None] | None = None,
                      vector_index: str | None = None) -> int:
        """Drop the HNSW index and build it again from the stored vectors; returns rows indexed.

        One CREATE INDEX (HNSW builds fastest in one pass); searches go on meanwhile, by
        scanning every vector.
        """
        if vector_index:
            self.set_vector_index(vector_index)
        if self.get_model_info() is None:
            return 0
        with self.transaction():
            self.drop_index()
            self.set_meta("index_state", "rebuilding")
            self.bump_generation()
        with self.transaction():
            self._build_memory()
            self.create_index()
            self.set_meta("index_state", "ok")
            self.bump_generation()
        total = self.count_vectors()
        if on_batch:
            on_batch(total)
        return total

    def _build_memory(self) -> None:
        """Give this transaction's index build room for the whole graph (a build that spills
        out of maintenance_work_mem runs several times slower), up to 4 GB."""
        row = self._sql("SELECT count(*), coalesce(max(vector_dims(embedding)), 0) "
                        "FROM passages").fetchone()
        wanted_mb = min(4096, int(row[0] * (row[1] * 4 + 300) * 1.3 / 2**20) + 64)
        current_mb = self._sql("SELECT setting::bigint / 1024 FROM pg_settings "  # in kB
                               "WHERE name = 'maintenance_work_mem'").fetchone()[0]
        if wanted_mb > current_mb:
            self._sql(f"SET LOCAL maintenance_work_mem = '{wanted_mb}MB'")


class SharedRateLimits:
    """Token buckets in the rate_limits table, one row per (limit, client): every web worker
    and machine serving this database counts a client's requests together.

    Time is the server's clock, so machines with skewed clocks agree. A bucket idle for a
    minute is full again, so such rows are deleted now and then.
    """

    def __init__(self, url: str):
        self.url = url
        self._conn = None
        self._lock = threading.Lock()  # one connection per worker, one statement at a time
        self._swept = 0.0

    def take(self, name: str, key: str, per_minute: int, spend) -> float:
        """0 when `key` may go ahead (and it is counted), else seconds until it may; `spend`
        is the bucket arithmetic (web/limits.py): (tokens, elapsed, per_minute) -> (tokens
        left, seconds to wait)."""
        with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = connect(self.url)
            conn = self._conn
            try:
                with conn.transaction():
                    now = conn.execute(
                        "SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()[0]
                    conn.execute("INSERT INTO rate_limits (name, key, tokens, updated) "
                                 "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                                 (name, key, float(per_minute), now))
                    tokens, updated = conn.execute(
                        "SELECT tokens, updated FROM rate_limits WHERE name = %s AND key = %s "
                        "FOR UPDATE", (name, key)).fetchone()
                    tokens, wait = spend(tokens, now - updated, per_minute)
                    conn.execute("UPDATE rate_limits SET tokens = %s, updated = %s "
                                 "WHERE name = %s AND key = %s", (tokens, now, name, key))
                    if now - self._swept >= 60:
                        self._swept = now
                        conn.execute("DELETE FROM rate_limits WHERE updated < %s", (now - 60,))
            except BaseException:
                conn.close()  # a broken session is not reused
                raise
            return wait

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
