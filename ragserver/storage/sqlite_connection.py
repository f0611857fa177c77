"""SQLite connections with sqlite-vss and sqlite-vec loaded, and the schema they hold."""

from __future__ import annotations

import errno
import fcntl
import importlib.util
import os
import sqlite3
import sys
from contextlib import contextmanager
from pathlib import Path

from .records import BackendUnavailable, CannotWrite, IngestLocked

SCHEMA_VERSION = 1
COLLECTION = "passages"

# The llm tool's embeddings layout (collections + embeddings), so `llm similar`
# can read the passages collection. Vectors in `embeddings.embedding` are the
# source of truth; the vss0 table is derived from them.
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT
);
CREATE TABLE IF NOT EXISTS posts (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL UNIQUE,
    origin TEXT NOT NULL,
    title TEXT NOT NULL,
    url TEXT NOT NULL DEFAULT '',
    date TEXT,
    tags TEXT NOT NULL DEFAULT '[]',
    content_hash TEXT NOT NULL,
    ingested_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_posts_origin ON posts(origin);
CREATE TABLE IF NOT EXISTS passages (
    id INTEGER PRIMARY KEY,
    post_id INTEGER NOT NULL REFERENCES posts(id),
    position INTEGER NOT NULL,
    heading_path TEXT NOT NULL DEFAULT '[]',
    anchor TEXT NOT NULL DEFAULT '',
    text TEXT NOT NULL,
    content_hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_passages_post ON passages(post_id, position);
CREATE TABLE IF NOT EXISTS collections (
    id INTEGER PRIMARY KEY,
    name TEXT,
    model TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS idx_collections_name ON collections(name);
CREATE TABLE IF NOT EXISTS embeddings (
    collection_id INTEGER REFERENCES collections(id),
    id TEXT,
    embedding BLOB,
    content TEXT,
    content_blob BLOB,
    content_hash BLOB,
    metadata TEXT,
    updated INTEGER,
    PRIMARY KEY (collection_id, id)
);
CREATE INDEX IF NOT EXISTS idx_embeddings_content_hash ON embeddings(content_hash);
-- Related posts: one vector per post (the normalised mean of its passages'
-- vectors, stamped with the post's content hash) and each post's nearest posts.
CREATE TABLE IF NOT EXISTS post_vectors (
    post_id INTEGER PRIMARY KEY,
    content_hash TEXT NOT NULL,
    embedding BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS related_posts (
    post_id INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    related_id INTEGER NOT NULL,
    score REAL NOT NULL,
    PRIMARY KEY (post_id, rank)
);
-- Explore: topics (groups of similar posts) and every post's place on the map, derived
-- from post_vectors by ragserver.explore and rebuilt when enough posts changed.
CREATE TABLE IF NOT EXISTS topics (
    id INTEGER PRIMARY KEY,
    label TEXT NOT NULL,
    label_source TEXT NOT NULL,
    keywords TEXT NOT NULL,
    x REAL NOT NULL,
    y REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS post_map (
    post_id INTEGER PRIMARY KEY,
    topic_id INTEGER NOT NULL,
    x REAL NOT NULL,
    y REAL NOT NULL,
    centrality REAL NOT NULL,
    content_hash TEXT NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS passages_fts USING fts5(
    title, headings, text, tokenize = 'porter unicode61'
);
"""

# Migrations of the llm tool's embeddings database, recorded as applied so that
# llm does not try to recreate the tables above when it opens this file.
LLM_MIGRATIONS = (
    "m001_create_tables",
    "m002_foreign_key",
    "m003_add_updated",
    "m004_store_content_hash",
    "m005_add_content_blob",
)


class ExtensionError(BackendUnavailable):
    """sqlite-vss could not be loaded into SQLite."""


def _sqlite_module():
    """The stdlib sqlite3 if it can load extensions, else pysqlite3."""
    probe = sqlite3.connect(":memory:")
    try:
        if hasattr(probe, "enable_load_extension"):
            return sqlite3
    finally:
        probe.close()
    try:
        from pysqlite3 import dbapi2
    except ImportError as error:
        raise ExtensionError(
            "this Python's sqlite3 cannot load extensions and pysqlite3-binary is not "
            "installed: pip install pysqlite3-binary") from error
    return dbapi2


def database_errors() -> tuple[type[BaseException], ...]:
    """Exception classes for SQLite failures, of whichever sqlite module is in use."""
    errors: list[type[BaseException]] = [sqlite3.Error]
    try:
        from pysqlite3 import dbapi2
        errors.append(dbapi2.Error)
    except ImportError:
        pass
    return tuple(errors)


def _load_torch_first() -> None:
    """Import torch (if installed) before sqlite-vss enters the process.

    SQLite loads extensions with RTLD_GLOBAL, so vss0's reference BLAS and LAPACK
    become global symbols; if that happens before torch is imported, torch's own
    matrix kernels are interposed and embedding runs tens of times slower
    (bench/load_order.py: 128 real passages in 90 s instead of 1.6 s). Importing
    torch first keeps its kernels.
    """
    if "torch" not in sys.modules and importlib.util.find_spec("torch") is not None:
        import torch  # noqa: F401


def connect(path: str | Path, *, readonly: bool = False):
    """Open the database with sqlite-vss loaded, WAL on, autocommit mode."""
    _load_torch_first()
    import sqlite_vec
    import sqlite_vss

    module = _sqlite_module()
    path = Path(path)
    if readonly:
        # On read-only media SQLite cannot create the -shm file a WAL database needs;
        # nothing can change the file there, so it may be read as immutable.
        mode = "ro" if os.access(path.parent, os.W_OK) else "ro&immutable=1"
        conn = module.connect(f"file:{path}?mode={mode}", uri=True, isolation_level=None,
                              check_same_thread=False, timeout=30)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = module.connect(str(path), isolation_level=None, check_same_thread=False,
                              timeout=30)
    try:
        # Fail here with SQLite's own reason (not a database, unreadable, ...): loading
        # the extensions below reads the file too and would blame sqlite-vss instead.
        conn.execute("PRAGMA schema_version").fetchone()
    except Exception:
        conn.close()
        raise
    try:
        conn.enable_load_extension(True)
        sqlite_vss.load(conn)
        sqlite_vec.load(conn)
        conn.enable_load_extension(False)
    except Exception as error:
        conn.close()
        raise ExtensionError(
            f"cannot load sqlite-vss ({error}); on Debian/Ubuntu it needs "
            "libgomp1 libblas3 liblapack3: apt-get install libgomp1 libblas3 liblapack3"
        ) from error
    conn.execute("PRAGMA busy_timeout = 30000")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
    return conn


@contextmanager
def transaction(conn):
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK if anything (even a KeyboardInterrupt) escapes."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextmanager
def writer_lock(db_path: Path):
    """Hold <db>.lock for the duration; raise IngestLocked at once if someone else holds it.

    One writer at a time: sqlite-vss rewrites its whole index on every commit, so two
    ingests would only slow each other down and fight over the same posts.
    """
    lock_path = Path(str(db_path) + ".lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a+")
    except OSError as error:
        raise CannotWrite(f"cannot write in {lock_path.parent} ({error.strerror}); "
                          "nothing was changed") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise IngestLocked(
                f"another ingest is already running on {db_path} (pid {holder}); "
                "this run did nothing. Try again when it has finished.") from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
        except OSError:
            pass  # the pid only names the holder to a second ingest; a full disk must not stop us here
        yield
    finally:
        handle.close()


def init_schema(conn) -> None:
    """Create the tables if missing and record the schema version."""
    with transaction(conn):
        # executescript() would commit on its own; run the statements in our transaction.
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                     (str(SCHEMA_VERSION),))
        conn.execute("INSERT OR IGNORE INTO collections(name, model) VALUES (?, '')",
                     (COLLECTION,))
        conn.execute("CREATE TABLE IF NOT EXISTS _sqlite_migrations (id INTEGER PRIMARY KEY, "
                     "migration_set TEXT, name TEXT, applied_at TEXT)")
        conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS idx__sqlite_migrations_migration_set_name "
                     "ON _sqlite_migrations(migration_set, name)")
        conn.executemany(
            "INSERT OR IGNORE INTO _sqlite_migrations(migration_set, name, applied_at) "
            "VALUES ('llm.embeddings', ?, datetime('now'))",
            [(name,) for name in LLM_MIGRATIONS])
