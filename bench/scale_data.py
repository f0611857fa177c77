"""Vectors, queries and exact answers for the scale benchmark (bench/bench_scale.py).

Vectors. The shared corpus has 2,919 real passage vectors; 1M copies of them with a
little noise (bench/corpus.py) would make the top 10 of every query near-ties among
copies of one passage, a poor test of an approximate index. So the vectors here are
derived from real text in two steps:

1. A pool of real embeddings: the corpus's passages, minus the posts held out for
   queries, plus every window of 12 words (stride 6) and of 24 words (stride 8) of their
   text, embedded with the model (about 25,000 real vectors of real text, on the same
   topics as the passages they come from).
2. Each synthetic vector is normalise(a * x_i + (1 - a) * x_j + e) for random pool vectors
   x_i, x_j, a uniform in [MIX_LOW, 1) and e Gaussian noise (sigma NOISE per dimension):
   mostly one real text pulled towards another, so vectors spread between topics the way
   new passages would, with no two alike.

The first rows of the matrix are the real passage vectors themselves; the rest are
synthetic, made in chunks of 100,000 with their own seed, so every size is a prefix of
the 1M matrix (20k and 200k are the first rows of 1M).

Queries: the passages of posts held out of the pool (real vectors the database has never
seen, like a new post's "more like this"), and post titles embedded as queries (the
titles of bench/corpus.py's pick_queries, whose posts are in the database).
Exact answers: the top 10 by inner product over the whole matrix (numpy, float32).

Everything is cached in /tmp/ragserver-bench/scale/ and reused.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from common import MODEL
from corpus import WORK as BENCH_WORK, corpus_db

WORK = BENCH_WORK / "scale"
SEED = 20240611
HELD_OUT_PASSAGES = 200  # posts are held out until at least this many passages
WINDOWS = ((12, 6), (24, 8))  # (words, stride) of the text windows added to the pool
MIX_LOW = 0.5
NOISE = 0.01
CHUNK = 100_000
LARGEST = 1_000_000
K = 10
PARAMETERS = {"seed": SEED, "held_out": HELD_OUT_PASSAGES, "windows": WINDOWS,
              "mix_low": MIX_LOW, "noise": NOISE, "chunk": CHUNK, "model": MODEL}


def _fresh(path: Path) -> bool:
    """True when `path` exists and was made with these parameters (stamp beside it)."""
    stamp = path.with_suffix(path.suffix + ".json")
    return path.exists() and stamp.exists() and json.loads(stamp.read_text()) == json.loads(
        json.dumps(PARAMETERS))


def _stamp(path: Path) -> None:
    path.with_suffix(path.suffix + ".json").write_text(json.dumps(PARAMETERS))


def real_passages() -> dict:
    """The corpus database's passages: ids, post ids, texts, titles and vectors, by id."""
    from ragserver.storage import open_storage

    conn = open_storage(corpus_db(), readonly=True)
    rows = conn.conn.execute(
        "SELECT p.id, p.post_id, p.text, o.title FROM passages p "
        "JOIN posts o ON o.id = p.post_id ORDER BY p.id").fetchall()
    vectors = conn.passage_vectors([r[0] for r in rows])
    conn.close()
    return {"ids": np.array([r[0] for r in rows]), "posts": np.array([r[1] for r in rows]),
            "texts": [r[2] for r in rows], "titles": [r[3] for r in rows],
            "vectors": np.stack([vectors[r[0]] for r in rows]).astype(np.float32)}


def held_out_posts(real: dict) -> set[int]:
    """Posts kept out of the pool, chosen at random until they hold enough passages."""
    rng = np.random.default_rng(SEED)
    posts = np.unique(real["posts"])
    held, count = set(), 0
    for post in rng.permutation(posts):
        if count >= HELD_OUT_PASSAGES:
            break
        held.add(int(post))
        count += int((real["posts"] == post).sum())
    return held


def windows(text: str) -> list[str]:
    """Every window of WINDOWS words of a passage (the whole text when shorter)."""
    words = text.split()
    out = []
    for size, stride in WINDOWS:
        out += [" ".join(words[s:s + size]) for s in range(0, max(1, len(words) - size + 1), stride)]
    return out


def _embedder():
    import torch

    from ragserver.embedder import SentenceTransformerEmbedder

    torch.set_num_threads(1)  # two shared cores: OpenMP threads spin against each other
    return SentenceTransformerEmbedder(MODEL, "", "", batch_size=64)


def pool() -> tuple[np.ndarray, np.ndarray, int]:
    """(pool vectors, the corpus passage row each comes from, how many are whole passages).

    The whole passages come first, then the windows.
    """
    path = WORK / "pool.npz"
    if _fresh(path):
        saved = np.load(path)
        return saved["vectors"], saved["rows"], int(saved["passages"])
    WORK.mkdir(parents=True, exist_ok=True)
    real = real_passages()
    held = held_out_posts(real)
    kept = [i for i, post in enumerate(real["posts"]) if int(post) not in held]
    texts, rows = [], []
    for i in kept:
        for window in windows(real["texts"][i]):
            texts.append(window)
            rows.append(i)
    started = time.perf_counter()
    embedded = _embedder().embed_passages(texts)
    print(f"embedded {len(texts):,} windows in {time.perf_counter() - started:.0f} s", flush=True)
    vectors = np.concatenate([real["vectors"][kept], embedded]).astype(np.float32)
    rows = np.concatenate([np.array(kept), np.array(rows)]).astype(np.int32)
    np.savez(path, vectors=vectors, rows=rows, passages=len(kept))
    _stamp(path)
    return vectors, rows, len(kept)


def _synthetic(chunk: int, count: int, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(count synthetic vectors, the pool index of each one's main part) for one chunk."""
    rng = np.random.default_rng([SEED, chunk])
    i = rng.integers(0, len(vectors), count)
    j = rng.integers(0, len(vectors), count)
    a = rng.uniform(MIX_LOW, 1.0, (count, 1)).astype(np.float32)
    mixed = a * vectors[i] + (1 - a) * vectors[j]
    mixed += rng.normal(0, NOISE, mixed.shape).astype(np.float32)
    mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
    return mixed.astype(np.float32), i


def matrix(size: int = LARGEST) -> np.ndarray:
    """The first `size` rows of the benchmark matrix (a read-only memory map of the 1M file)."""
    path = WORK / f"vectors-{LARGEST}.npy"
    if not _fresh(path):
        vectors, rows, passages = pool()
        partial = WORK / f"vectors-{LARGEST}.partial.npy"
        out = np.lib.format.open_memmap(partial, "w+", np.float32, (LARGEST, vectors.shape[1]))
        origin = np.lib.format.open_memmap(WORK / f"origins-{LARGEST}.npy", "w+", np.int32,
                                           (LARGEST,))
        out[:passages] = vectors[:passages]
        origin[:passages] = rows[:passages]
        for chunk, start in enumerate(range(passages, LARGEST, CHUNK)):
            count = min(CHUNK, LARGEST - start)
            made, picked = _synthetic(chunk, count, vectors)
            out[start:start + count] = made
            origin[start:start + count] = rows[picked]
        out.flush()
        origin.flush()
        del out, origin
        partial.rename(path)
        _stamp(path)
    return np.load(path, mmap_mode="r")[:size]


def origins(size: int = LARGEST) -> np.ndarray:
    """For each row of the matrix, the corpus passage row whose text it mostly comes from."""
    matrix()
    return np.load(WORK / f"origins-{LARGEST}.npy", mmap_mode="r")[:size]


def queries() -> tuple[np.ndarray, list[str], list[str]]:
    """(query vectors, kinds "passage"/"title", texts): held-out passages, then titles."""
    path = WORK / "queries.npz"
    if _fresh(path):
        saved = np.load(path)
        return saved["vectors"], list(saved["kinds"]), list(saved["texts"])
    from corpus import pick_queries

    real = real_passages()
    held = held_out_posts(real)
    picked = [i for i, post in enumerate(real["posts"]) if int(post) in held]
    titles = pick_queries(250)
    embedder = _embedder()
    title_vectors = np.stack([embedder.embed_query(t) for t in titles])
    vectors = np.concatenate([real["vectors"][picked], title_vectors]).astype(np.float32)
    kinds = ["passage"] * len(picked) + ["title"] * len(titles)
    texts = [real["texts"][i] for i in picked] + titles
    np.savez(path, vectors=vectors, kinds=np.array(kinds), texts=np.array(texts))
    _stamp(path)
    return vectors, kinds, texts


def exact_top(size: int, k: int = K) -> np.ndarray:
    """Row indices (0-based) of the exact top k of every query over the first `size` rows."""
    path = WORK / f"truth-{size}.npy"
    if _fresh(path):
        return np.load(path)
    q, _, _ = queries()
    data = matrix(size)
    best_scores = np.full((len(q), k), -np.inf, np.float32)
    best_rows = np.zeros((len(q), k), np.int64)
    for start in range(0, size, CHUNK):
        scores = q @ np.asarray(data[start:start + CHUNK]).T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        merged_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], 1)
        merged_rows = np.concatenate([best_rows, top + start], 1)
        keep = np.argsort(-merged_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(merged_scores, keep, 1)
        best_rows = np.take_along_axis(merged_rows, keep, 1)
    np.save(path, best_rows)
    _stamp(path)
    return best_rows


def recall(found: list[list[int]], truth: np.ndarray, k: int = K) -> np.ndarray:
    """recall@k of each query: the share of its exact top k among the rows found."""
    return np.array([len(set(map(int, f[:k])) & set(map(int, t[:k]))) / k
                     for f, t in zip(found, truth)])


def spread(size: int, sample: int = 2000) -> dict:
    """How crowded the vectors are, for the report: median cosine of a query's 1st, 10th
    and 100th nearest row, and of a sampled row's nearest other row."""
    q, _, _ = queries()
    data = matrix(size)
    top = np.full((len(q), 100), -np.inf, np.float32)
    rng = np.random.default_rng(SEED)
    picked = np.sort(rng.choice(size, min(sample, size), replace=False))
    nearest = np.full(len(picked), -np.inf, np.float32)
    probe = np.asarray(data[picked])
    for start in range(0, size, CHUNK):
        block = np.asarray(data[start:start + CHUNK])
        scores = q @ block.T
        top = -np.sort(-np.concatenate([top, -np.sort(-scores, 1)[:, :100]], 1), 1)[:, :100]
        own = probe @ block.T
        inside = (picked >= start) & (picked < start + len(block))
        own[np.nonzero(inside)[0], picked[inside] - start] = -np.inf
        nearest = np.maximum(nearest, own.max(1))
    return {"query_top1": float(np.median(top[:, 0])), "query_top10": float(np.median(top[:, 9])),
            "query_top100": float(np.median(top[:, 99])),
            "query_gap_10_11": float(np.median(top[:, 9] - top[:, 10])),
            "row_nearest": float(np.median(nearest))}


if __name__ == "__main__":
    import sys

    sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]
    started = time.perf_counter()
    vectors, rows, passages = pool()
    print(f"pool: {len(vectors):,} vectors ({passages:,} passages)", flush=True)
    q, kinds, _ = queries()
    print(f"queries: {len(q)} ({kinds.count('passage')} passages, {kinds.count('title')} titles)")
    matrix()
    print(f"matrix ready ({time.perf_counter() - started:.0f} s)", flush=True)
    for size in (20_000, 200_000, LARGEST):
        exact_top(size)
        print(f"truth {size:,} ready ({time.perf_counter() - started:.0f} s)", flush=True)
