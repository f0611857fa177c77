"""Benchmark databases of the scale benchmark written through ragserver's real storage backends.

Each database holds the first N rows of the benchmark matrix (bench/scale_data.py) as
passages, in posts of POST_PASSAGES passages; a passage's text and its post's title are
those of the real passage its vector mostly comes from. They are written as ingest writes
them: `open_storage(target, create=True)`, the model recorded, then `write_post` in
transactions of COMMIT_ROWS passages; then `rebuild_index()`. Timed: the writes (passages
per second, no embedding: the vectors are given), each 1,000-passage commit, and the
rebuild. Built databases are kept (SQLite files and PostgreSQL databases under
/tmp/ragserver-bench/scale/) and reused; their build figures are recorded in builds.json.

Passage ids are given in write order by both backends, so passage id i + 1 is matrix row i
(checked after the build).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np

from scale_builds import _log, _record, _records
from scale_data import WORK, matrix, origins, real_passages

COMMIT_ROWS = 1000
POST_PASSAGES = 10  # about the corpus's mean (2,919 passages in 282 posts)


def target(kind: str, size: int) -> str:
    """Where the database of this kind ("vss", "vec" or "pg") and size lives."""
    if kind == "pg":
        import scale_pg

        return scale_pg.server_uri(f"ragserver_{size}")
    return str(WORK / f"ragserver-{kind}-{size}.db")


def _model_info():
    from corpus import corpus_db
    from ragserver.storage import open_storage

    conn = open_storage(corpus_db(), readonly=True)
    info = conn.get_model_info()
    conn.close()
    return info


def _ready(where: str, size: int) -> bool:
    from ragserver.storage import open_storage

    try:
        conn = open_storage(where, readonly=True)
    except Exception:
        return False
    try:
        stats = conn.get_stats()
        return stats.passages == stats.vectors == stats.index_rows == size and \
            stats.index_state == "ok"
    finally:
        conn.close()


def _drop(kind: str, where: str) -> None:
    if kind == "pg":
        import psycopg

        import scale_pg

        from urllib.parse import urlsplit

        name = urlsplit(where).path.lstrip("/")
        with psycopg.connect(scale_pg.server_uri(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        scale_pg.server_uri(name)  # made again, empty
    else:
        for extra in ("", "-wal", "-shm", ".lock"):
            Path(f"{where}{extra}").unlink(missing_ok=True)


def build(kind: str, size: int, index_while_writing: bool = False) -> dict:
    """The database of this kind and size, built through its backend if missing; its figures.

    A new PostgreSQL database gets its (empty) HNSW index with the model, and every insert
    then goes into the graph; with index_while_writing=False it is dropped before the
    writes (the index is built once by rebuild_index)."""
    from ragserver.storage import NewPassage, NewPost, open_storage

    name, where = f"backend-{kind}-{size}", target(kind, size)
    if name in _records() and _ready(where, size):
        return _records()[name]
    _drop(kind, where)
    data, origin, real = matrix(size), origins(size), real_passages()
    info = _model_info()
    _log(f"{kind} {size:,} through the backend: writing")
    before = os.getloadavg()[0]
    conn = open_storage(where, create=True)
    with conn.transaction():
        if kind in ("vss", "vec"):
            conn.set_vector_index(kind)
        conn.set_model_info(info)
        if not index_while_writing and kind == "pg":
            conn.drop_index()
    commits: dict[int, float] = {}
    checkpoints = {0, size // 2 // COMMIT_ROWS * COMMIT_ROWS, size - COMMIT_ROWS}
    started = time.perf_counter()
    for start in range(0, size, COMMIT_ROWS):
        rows = range(start, min(size, start + COMMIT_ROWS))
        block = np.asarray(data[rows.start:rows.stop], np.float32)
        posts = []
        for first in range(rows.start, rows.stop, POST_PASSAGES):
            members = range(first, min(rows.stop, first + POST_PASSAGES))
            head = int(origin[first])
            post = NewPost(source=f"scale/{first}.md", origin="bench-scale",
                           title=real["titles"][head], url=f"https://scale.example/{first}/",
                           date=None, tags=(), content_hash=str(first))
            passages = [NewPassage(position=p - first, heading_path=(), anchor="",
                                   text=real["texts"][int(origin[p])],
                                   content_hash=hashlib.md5(str(p).encode()).hexdigest(),
                                   vector=block[p - rows.start]) for p in members]
            posts.append((post, passages))
        took = time.perf_counter()
        with conn.transaction():
            for post, passages in posts:
                conn.write_post(post, passages, [])
            conn.bump_generation()
        if start in checkpoints:
            commits[start] = time.perf_counter() - took
        if start and start % 100_000 == 0:
            _log(f"{kind} {size:,}: {start:,} written, "
                 f"{start / (time.perf_counter() - started):,.0f} passages/s")
    write_s = time.perf_counter() - started
    _log(f"{kind} {size:,}: written in {write_s:.0f} s; rebuilding the index")
    started = time.perf_counter()
    conn.rebuild_index()
    rebuild_s = time.perf_counter() - started
    stats = conn.get_stats()
    first_id = _first_passage_id(conn)
    conn.close()
    assert first_id == 1, f"passage ids of {where} start at {first_id}, not 1"
    assert _ready(where, size), f"{where} did not come out with {size} passages"
    _log(f"{kind} {size:,}: index rebuilt in {rebuild_s:.0f} s")
    return _record(name, {
        "write_s": round(write_s, 1), "passages_per_s": round(size / write_s),
        "commit_s": {str(k): round(v, 3) for k, v in sorted(commits.items())},
        "rebuild_s": round(rebuild_s, 1), "db_bytes": stats.db_bytes,
        "index_bytes": stats.index_bytes, "index": stats.vector_index,
        "index_while_writing": index_while_writing or kind != "pg",
        "load_average": [before, os.getloadavg()[0]]})


def _first_passage_id(conn) -> int:
    sql = "SELECT min(id) FROM passages"
    return conn.conn.execute(sql).fetchone()[0]


if __name__ == "__main__":
    import sys

    sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]
    for what in sys.argv[1:]:  # e.g. pg-20000 vec-1000000 vss-200000
        kind, size = what.split("-")
        print(build(kind, int(size)), flush=True)
