"""Related posts: each post's nearest posts, kept in step with the posts incrementally.

A post's vector is the normalised mean of its passages' vectors. After an ingest,
`refresh` recomputes the vectors of new and changed posts, then the top-k lists
of exactly the posts whose list could have changed: the new and changed posts
themselves, posts whose list names a changed or deleted post, posts with a short
list, and posts that a changed post is now closer to than their k-th neighbour.
The result equals a full recomputation (tests/test_related.py checks this).
"""

from __future__ import annotations

import numpy as np

from .storage import Post, RelatedPost, Storage, Topic

TOP = 10
NEARBY = 3  # posts near a post on the map, shown beside its related posts
BLOCK = 1024  # posts compared against all others per matrix product


def post_vector(passages: np.ndarray) -> np.ndarray:
    """The normalised mean of a post's passage vectors."""
    mean = passages.mean(axis=0)
    norm = np.linalg.norm(mean)
    return (mean / norm if norm else mean).astype(np.float32)


def nearest(ids: np.ndarray, matrix: np.ndarray, rows, k: int = TOP) -> dict[int, list[tuple[int, float]]]:
    """The k most similar other posts of the posts at `rows`: post id -> [(id, score)]."""
    take = min(k, len(ids) - 1)
    rows = np.asarray(sorted(rows), dtype=np.int64)
    lists: dict[int, list[tuple[int, float]]] = {}
    for start in range(0, len(rows), BLOCK):
        block = rows[start:start + BLOCK]
        sims = matrix[block] @ matrix.T
        sims[np.arange(len(block)), block] = -np.inf
        top = np.argpartition(-sims, take - 1, axis=1)[:, :take] if take > 0 else \
            np.zeros((len(block), 0), np.int64)
        for i, row in enumerate(block):
            order = sorted(top[i], key=lambda j: (-sims[i, j], ids[j]))
            lists[int(ids[row])] = [(int(ids[j]), float(sims[i, j])) for j in order]
    return lists


def _affected(ids, matrix, lists, changed: set[int], gone: set[int], k: int) -> set[int]:
    """Rows of the posts whose top-k list may differ after these changes."""
    if len(changed) * 4 >= len(ids):
        return set(range(len(ids)))  # most posts changed: recompute everything
    changed_rows = [n for n, pid in enumerate(ids) if int(pid) in changed]
    closest_changed = (matrix[changed_rows] @ matrix.T).max(axis=0) if changed_rows else \
        np.full(len(ids), -np.inf)
    full = min(k, len(ids) - 1)
    touched = changed | gone
    rows = set(changed_rows)
    for n, pid in enumerate(ids):
        current = lists.get(int(pid), [])
        if (len(current) < full or any(rid in touched for rid, _ in current)
                or closest_changed[n] > current[-1][1]):
            rows.add(n)
    return rows


def refresh(db: Storage, k: int = TOP) -> int:
    """Bring post vectors and related lists up to date; returns how many lists were rewritten."""
    changed, gone = db.stale_post_vectors()
    if not changed and not gone:
        return 0
    fresh = [(pid, digest, post_vector(vectors))
             for pid, digest, vectors in db.passage_vectors_of_posts(changed)]
    with db.transaction():
        # Vectors and lists change together, so a killed run leaves them stale, never skewed.
        db.save_post_vectors(fresh, gone)
        ids, matrix = db.all_post_vectors()
        rows = _affected(ids, matrix, db.related_lists(),
                         {pid for pid, _, _ in fresh}, set(gone), k) if len(ids) else set()
        lists = nearest(ids, matrix, rows, k) if rows else {}
        db.save_related(lists, gone)
    return len(lists)


class NotFound(LookupError):
    """No post with that source id or URL."""


def related_posts(db: Storage, *, source: str | None = None, url: str | None = None,
                  n: int = TOP) -> tuple[Post, list[RelatedPost]]:
    """A post (by source id or URL) and its most similar posts, best first."""
    post = db.find_post(source=source, url=url)
    if post is None:
        raise NotFound(f"no post with source {source!r}" if source else f"no post at {url!r}")
    return post, db.related_for(post.id, n)


def map_neighbours(db: Storage, post: Post, exclude: set[str], n: int = NEARBY
                   ) -> tuple[Topic | None, list[RelatedPost]]:
    """A post's topic and up to n posts nearest to it on the map whose sources are not in
    `exclude` (its related posts, say), scored as related posts are; (None, []) for a post
    not on the map (a database whose topics were never computed)."""
    point = db.map_point(post.id)
    if point is None:
        return None, []
    topic = next((t for t in db.topics() if t.id == point.topic), None)
    near = [p for p in db.map_near(point, n + len(exclude)) if p.source not in exclude][:n]
    vectors = {pid: post_vector(matrix) for pid, _, matrix in
               db.passage_vectors_of_posts([post.id, *(p.post_id for p in near)])}
    own = vectors.get(post.id)
    return topic, [RelatedPost(p.source, p.title, p.url, p.date,
                               float(vectors[p.post_id] @ own)
                               if own is not None and p.post_id in vectors else 0.0)
                   for p in near]
