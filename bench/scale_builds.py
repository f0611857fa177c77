"""Built indexes of the scale benchmark, made once and reused, with what their builds cost.

A build's figures (seconds to load, seconds to build the index, load average, date) are
recorded in /tmp/ragserver-bench/scale/builds.json when it is made; a later run that
reuses the index reports them from there.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from scale_data import WORK, matrix

RECORD = WORK / "builds.json"
BATCH = 1000  # rows per commit into a SQLite index, as ragserver's rebuild_index commits


def _records() -> dict:
    return json.loads(RECORD.read_text()) if RECORD.exists() else {}


def _record(name: str, figures: dict) -> dict:
    records = _records()
    figures = {**figures, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    records[name] = figures
    RECORD.write_text(json.dumps(records, indent=1))
    return figures


def _log(message: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", flush=True)


def pgvector(size: int) -> dict:
    """items_<size> with its HNSW index in the benchmark's PostgreSQL; its build figures."""
    import scale_pg

    name = f"pgvector-{size}"
    conn = scale_pg.connect()
    try:
        if scale_pg.table_ready(conn, size) and name in _records():
            return _records()[name]
        _log(f"pgvector {size:,}: loading")
        before = os.getloadavg()[0]
        load_s = scale_pg.load(conn, size, matrix(size))
        _log(f"pgvector {size:,}: loaded in {load_s:.0f} s; building HNSW")
        build_s = scale_pg.build_index(conn, size)
        _log(f"pgvector {size:,}: built in {build_s:.0f} s")
        return _record(name, {"load_s": round(load_s, 1), "build_s": round(build_s, 1),
                              "load_average": [before, os.getloadavg()[0]],
                              **scale_pg.sizes(conn, size)})
    finally:
        conn.close()


def sqlite_path(kind: str, size: int) -> Path:
    return WORK / f"{kind}-{size}.db"


def sqlite_index(kind: str, size: int) -> dict:
    """A SQLite file holding only the vector index (`vss` or `vec`) of the first `size` rows
    (rowid = row index + 1), filled in 1,000-row commits through the storage layer's own
    index writes, as `ragserver reindex` fills it; its build figures."""
    from ragserver.storage import open_storage
    from ragserver.storage.sqlite import vector_to_blob

    name, path = f"{kind}-{size}", sqlite_path(kind, size)
    if path.exists() and name in _records():
        return _records()[name]
    partial = path.with_suffix(".partial")
    for extra in ("", "-wal", "-shm"):
        Path(f"{partial}{extra}").unlink(missing_ok=True)
    data = matrix(size)
    _log(f"sqlite-{kind} {size:,}: building")
    before = os.getloadavg()[0]
    started = time.perf_counter()
    conn = open_storage(partial, create=True)
    with conn.transaction():
        conn.set_vector_index(kind)
        conn.create_index(data.shape[1])
    for start in range(0, size, BATCH):
        block = np.asarray(data[start:start + BATCH], np.float32)
        with conn.transaction():
            conn.insert_index_rows([(start + i + 1, vector_to_blob(v)) for i, v in enumerate(block)])
            conn.bump_generation()
    build_s = time.perf_counter() - started
    index_bytes = conn.get_stats().index_bytes
    conn.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    partial.rename(path)
    _log(f"sqlite-{kind} {size:,}: built in {build_s:.0f} s")
    return _record(name, {"build_s": round(build_s, 1), "index_bytes": index_bytes,
                          "file_bytes": path.stat().st_size,
                          "load_average": [before, os.getloadavg()[0]]})


if __name__ == "__main__":
    import sys

    sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]
    for what in sys.argv[1:]:  # e.g. pg-20000 vec-1000000 vss-200000
        kind, size = what.split("-")
        if kind == "pg":
            print(pgvector(int(size)))
        else:
            print(sqlite_index(kind, int(size)))
