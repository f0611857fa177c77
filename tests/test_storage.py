"""Storage: the backend table, the SQLite backend's connections and its load-order trap."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ragserver import storage
from ragserver.storage import NotADatabase, open_storage
from ragserver.storage.sqlite import SQLiteStorage
from ragserver.storage.sqlite_connection import connect, init_schema


def test_connect_loads_sqlite_vss_after_torch():
    """vss0 is loaded RTLD_GLOBAL; torch must already be in the process (bench/load_order.py)."""
    code = ("import sys; from ragserver.storage.sqlite_connection import connect; "
            "assert 'torch' not in sys.modules; c = connect(':memory:'); "
            "print('torch' in sys.modules, c.execute('select vss_version()').fetchone()[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "v0.1.2"]


def test_schema_is_idempotent_and_llm_compatible(tmp_path):
    conn = connect(tmp_path / "s.db")
    init_schema(conn)
    init_schema(conn)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"posts", "passages", "collections", "embeddings", "passages_fts", "meta",
            "_sqlite_migrations"} <= tables
    assert conn.execute("SELECT name FROM collections").fetchall() == [("passages",)]
    applied = [r[0] for r in conn.execute(
        "SELECT name FROM _sqlite_migrations WHERE migration_set = 'llm.embeddings' ORDER BY id")]
    assert applied == ["m001_create_tables", "m002_foreign_key", "m003_add_updated",
                       "m004_store_content_hash", "m005_add_content_blob"]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_a_path_or_a_sqlite_url_opens_the_sqlite_backend(tmp_path):
    path = tmp_path / "blog.db"
    made = open_storage(path, create=True)
    made.close()
    for target in (path, str(path), f"sqlite://{path}"):
        opened = open_storage(target, readonly=True)
        assert isinstance(opened, SQLiteStorage) and opened.location == str(path)
        assert opened.get_schema_version() == 1
        opened.close()


def test_a_file_that_is_not_ours_and_an_unknown_scheme_are_refused(tmp_path):
    other = tmp_path / "other.db"
    connect(other).execute("CREATE TABLE notes (text TEXT)")
    with pytest.raises(NotADatabase, match="is not a ragserver database"):
        open_storage(other)
    with pytest.raises(ValueError, match=r"no storage backend for mysql://"):
        open_storage("mysql://localhost/blog")
    assert NotADatabase in storage.database_errors()


class BlogFileStorage(SQLiteStorage):
    """A backend of its own URL scheme (here one that keeps SQLite underneath)."""

    kind = "blogfile"

    def __init__(self, target, **options):
        super().__init__(target.removeprefix("blogfile://"), **options)


def test_a_backend_is_one_row_in_the_table(tmp_path, monkeypatch):
    """A new backend is a class implementing Storage plus its row in BACKENDS."""
    monkeypatch.setitem(storage.BACKENDS, "blogfile", "test_storage:BlogFileStorage")
    made = open_storage(f"blogfile://{tmp_path / 'b.db'}", create=True)
    assert made.kind == "blogfile" and made.get_schema_version() == 1
    assert made.location == str(tmp_path / "b.db")
    made.close()
