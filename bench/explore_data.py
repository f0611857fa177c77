"""Databases of 282, 2,000 and 20,000 posts for the explore benchmark (bench/bench_explore.py).

Topics and the map read post vectors (the normalised mean of a post's passage vectors),
post texts and titles. The shared corpus has 282 real posts, so larger blogs are derived
from them the way bench/scale_data.py derives passage vectors (its docstring says why not
noisy copies: copies would pile up on the 282 originals, every cluster and map neighbourhood
a clump of near-ties):

- post vector: normalise(a * x_i + (1 - a) * x_j + e) for two random real post vectors
  x_i, x_j, a uniform in [MIX_LOW, 1) and e Gaussian noise (sigma NOISE per dimension): a
  post mostly on one real post's subject, pulled towards another's;
- title: that of x_i's post, the main part;
- text: x_i's passages, then the first (1 - a) share of x_j's (rounded up): about a real
  post's length and words, in the proportions of its vector.

Each database is the corpus database (bench/corpus.py: the 282 posts ingested by the real
pipeline) with synthetic posts appended through the storage backend, as ingest writes:
`write_post` with one passage carrying the vector, in transactions of COMMIT_ROWS posts
(sqlite-vss rewrites its index blob at every commit), then `related.refresh` computes the
post vectors (the mean of one passage: the vector itself) and related lists. Synthetic post
n is the same in every database (one seeded stream), so 2,000 is a prefix of 20,000; the
posts after a database's last are the ones the benchmark adds to it to time a refresh.

Built databases are kept in /tmp/ragserver-bench/explore/ with a stamp of these parameters
and what their build took, and reused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from corpus import WORK as BENCH_WORK, _remove, corpus_db

WORK = BENCH_WORK / "explore"
SEED = 20241202
MIX_LOW = 0.5  # as bench/scale_data.py
NOISE = 0.01
COMMIT_ROWS = 1000
LARGEST = 20_000
SPARE = 200  # synthetic posts beyond the largest database, for the refresh measurements
PARAMETERS = {"seed": SEED, "mix_low": MIX_LOW, "noise": NOISE, "commit_rows": COMMIT_ROWS,
              "largest": LARGEST, "spare": SPARE, "text": "main passages + (1-a) of second"}


def _log(message: str) -> None:
    print(f"[explore {time.strftime('%H:%M:%S')}] {message}", flush=True)


def real_posts() -> dict:
    """The corpus database's posts: ids, sources, folders, titles, passage texts, dates and
    post vectors, in post id order."""
    from ragserver.storage import open_storage

    conn = open_storage(corpus_db(), readonly=True)
    ids, vectors = conn.all_post_vectors()
    posts = {post.id: post for post in conn.list_posts()}
    passages = {int(pid): [p.text for p in conn.passages_for_post(int(pid))] for pid in ids}
    conn.close()
    assert len(ids) == len(posts), "the corpus database lacks post vectors"
    chosen = [posts[int(pid)] for pid in ids]
    return {"ids": ids, "vectors": vectors.astype(np.float32),
            "sources": [p.source for p in chosen],
            "folders": [p.source.split("/")[0] for p in chosen],
            "titles": [p.title for p in chosen], "dates": [p.date for p in chosen],
            "passages": [passages[int(pid)] for pid in ids]}


def mixes(count: int = LARGEST + SPARE) -> dict:
    """The first `count` synthetic posts' recipes: main and second real post (row indices),
    weight a of the main one, and vector."""
    real = real_posts()
    vectors = real["vectors"]
    rng = np.random.default_rng(SEED)
    total = LARGEST + SPARE  # drawn whole, so that every count is a prefix of the same stream
    i = rng.integers(0, len(vectors), total)
    j = rng.integers(0, len(vectors), total)
    a = rng.uniform(MIX_LOW, 1.0, total).astype(np.float32)
    noise = rng.normal(0, NOISE, (total, vectors.shape[1])).astype(np.float32)
    mixed = a[:, None] * vectors[i] + (1 - a[:, None]) * vectors[j] + noise
    mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
    return {"main": i[:count], "second": j[:count], "a": a[:count],
            "vectors": mixed[:count].astype(np.float32), "real": real}


def synthetic_post(n: int, recipes: dict):
    """(NewPost, [NewPassage]) of synthetic post n (0-based)."""
    from ragserver.storage import NewPassage, NewPost

    real = recipes["real"]
    i, j, a = int(recipes["main"][n]), int(recipes["second"][n]), float(recipes["a"][n])
    second = real["passages"][j]
    text = "\n".join(real["passages"][i] + second[:math.ceil((1 - a) * len(second))])
    digest = hashlib.sha256(f"explore-{n}".encode()).hexdigest()
    post = NewPost(source=f"mix/{n}.md", origin="bench-explore", title=real["titles"][i],
                   url=f"https://mix.example/{n}/", date=real["dates"][i], tags=(),
                   content_hash=digest)
    passage = NewPassage(position=0, heading_path=(), anchor="", text=text,
                         content_hash=digest, vector=recipes["vectors"][n])
    return post, [passage]


def _fresh(path: Path) -> bool:
    stamp = path.with_suffix(".json")
    return path.exists() and stamp.exists() and \
        json.loads(stamp.read_text()).get("parameters") == json.loads(json.dumps(PARAMETERS))


def build_figures(size: int) -> dict:
    """What building the database of this size took (written when it was built)."""
    stamp = (WORK / f"posts-{size}.db").with_suffix(".json")
    return json.loads(stamp.read_text()).get("build", {}) if stamp.exists() else {}


def posts_db(size: int) -> Path:
    """The corpus database with synthetic posts appended up to `size` posts (built once)."""
    from ragserver import related
    from ragserver.storage import open_storage

    path = WORK / f"posts-{size}.db"
    if _fresh(path):
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    partial = WORK / f"posts-{size}.db.partial"
    _remove(partial)
    shutil.copyfile(corpus_db(), partial)
    conn = open_storage(partial)
    start = len(conn.list_posts())
    recipes = mixes(max(0, size - start))
    figures = {"load_average": [os.getloadavg()[0]]}
    started = time.perf_counter()
    for first in range(0, size - start, COMMIT_ROWS):
        with conn.transaction():
            for n in range(first, min(size - start, first + COMMIT_ROWS)):
                conn.write_post(*synthetic_post(n, recipes), [])
            conn.bump_generation()
        if first and first % 5000 == 0:
            _log(f"{size:,}: {start + first:,} posts written")
    figures["write_s"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    related.refresh(conn)
    figures["related_refresh_s"] = round(time.perf_counter() - started, 1)
    ids, _ = conn.all_post_vectors()
    stats = conn.get_stats()
    conn.close()
    figures["load_average"].append(os.getloadavg()[0])
    assert len(ids) == stats.posts == size, f"{partial}: {stats.posts} posts, {len(ids)} vectors"
    assert stats.vectors == stats.index_rows and stats.index_state == "ok"
    figures.update(db_bytes=stats.db_bytes, passages=stats.passages)
    _log(f"{size:,} posts written in {figures['write_s']} s, related lists in "
         f"{figures['related_refresh_s']} s")
    partial.rename(path)
    for extra in ("-wal", "-shm"):
        Path(f"{partial}{extra}").unlink(missing_ok=True)
    path.with_suffix(".json").write_text(json.dumps({"parameters": PARAMETERS,
                                                     "build": figures}))
    return path


def working_copy(size: int, name: str) -> Path:
    """A fresh copy of the database of this size to write topics and new posts into."""
    source = posts_db(size)
    target = WORK / f"work-{name}.db"
    _remove(target)
    shutil.copyfile(source, target)
    return target


if __name__ == "__main__":
    import sys

    sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]
    for size in (2_000, LARGEST):
        posts_db(size)
