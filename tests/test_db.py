"""Connections: extension loading and its load-order trap."""

from __future__ import annotations

import subprocess
import sys

from ragserver.storage.sqlite_connection import connect, init_schema


def test_connect_loads_sqlite_vss_after_torch():
    """vss0 is loaded RTLD_GLOBAL; torch must already be in the process (bench/load_order.py)."""
    code = ("import sys; from ragserver.storage.sqlite_connection import connect; assert 'torch' not in sys.modules; "
            "c = connect(':memory:'); print('torch' in sys.modules, c.execute('select vss_version()').fetchone()[0])")
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
