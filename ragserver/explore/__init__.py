"""The blog's shape from its post vectors: topics, a map of every post, and axes.

`refresh` runs at the end of every ingest (after related posts, whose post vectors it
reads). When at least REBUILD_SHARE of the posts changed since the last full build (or
there was none) it clusters and projects everything again and names the topics; otherwise
it only places new and changed posts: each joins the topic whose mean vector is nearest
and sits among its most similar posts on the map, so a post is never without a topic.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from ..storage import MapPoint, Storage, Topic
from . import layout, topics as topic_model

REBUILD_SHARE = 0.1


@dataclass
class Refreshed:
    """What a refresh did: "built" (everything anew), "placed" (new and changed posts put
    on the existing map), or "unchanged"."""
    kind: str
    topics: int = 0
    placed: int = 0
    removed: int = 0
    seconds: dict = field(default_factory=dict)

    def line(self) -> str:
        if self.kind == "built":
            return f"topics rebuilt: {self.topics} topics over {self.placed} posts"
        if self.kind == "placed":
            return (f"topics kept: {self.placed} post{'s' * (self.placed != 1)} placed, "
                    f"{self.removed} removed")
        return "topics unchanged"


def _changes(db: Storage, ids: np.ndarray) -> tuple[list[int], list[int]]:
    """(posts not yet on the map or changed since placed, placed posts that are gone)."""
    current = {post.id: post.content_hash for post in db.list_posts()}
    placed = db.map_hashes()
    changed = [int(pid) for pid in ids if placed.get(int(pid)) != current.get(int(pid))]
    gone = sorted(set(placed) - {int(pid) for pid in ids})
    return changed, gone


def refresh(db: Storage, *, labeler: topic_model.Labeler | None = None, k: int | None = None,
            rebuild: bool = False, threads: int = 1) -> Refreshed:
    """Bring topics and the map up to date (see the module docstring).

    k: the number of topics (None: the one the last build was given, else chosen from the
    data; 0: chosen from the data from now on). rebuild: build anew whatever changed.
    """
    ids, matrix = db.all_post_vectors()
    state = db.get_map_state()
    changed, gone = _changes(db, ids)
    given = state.get("k_given") if k is None else (k or None)
    if (rebuild or not state or given != state.get("k_given")
            or len(changed) + len(gone) >= REBUILD_SHARE * max(1, state.get("posts", 0))):
        return build(db, ids, matrix, labeler=labeler, k=given, threads=threads)
    if not changed and not gone:
        return Refreshed("unchanged")
    return _place(db, ids, matrix, changed, gone)


def build(db: Storage, ids: np.ndarray, matrix: np.ndarray, *,
          labeler: topic_model.Labeler | None = None, k: int | None = None,
          threads: int = 1) -> Refreshed:
    """Cluster, name and project every post, and store it all in one transaction."""
    seconds = {}
    started = time.perf_counter()
    labels, centroids = topic_model.cluster(matrix, k, threads=threads)
    seconds["cluster"] = time.perf_counter() - started

    started = time.perf_counter()
    texts = db.post_texts()
    titles_of = {post.id: post.title for post in db.list_posts()}
    hashes = {post.id: post.content_hash for post in db.list_posts()}
    words = topic_model.keywords([texts.get(int(pid), "") for pid in ids], labels,
                                 titles=[titles_of.get(int(pid), "") for pid in ids])
    seconds["keywords"] = time.perf_counter() - started

    started = time.perf_counter()
    xy = layout.project(matrix, threads=threads)
    seconds["project"] = time.perf_counter() - started

    started = time.perf_counter()
    centrality = np.einsum("ij,ij->i", matrix, centroids[labels]) if len(ids) else np.zeros(0)
    found: list[Topic] = []
    taken: set[str] = set()
    for topic in range(len(centroids)):
        members = np.flatnonzero(labels == topic)
        central = members[np.argsort(-centrality[members], kind="stable")]
        titles = [titles_of[int(ids[i])] for i in central if titles_of.get(int(ids[i]), "").strip()]
        label, source = topic_model.name_topic(labeler, titles, words[topic], taken)
        taken.add(label.lower())
        centre = xy[members].mean(axis=0)
        found.append(Topic(topic + 1, label, source, words[topic], float(centre[0]),
                           float(centre[1])))
    seconds["labels"] = time.perf_counter() - started

    rows = [(int(pid), int(labels[i]) + 1, xy[i][0], xy[i][1], centrality[i], hashes[int(pid)])
            for i, pid in enumerate(ids)]
    state = {"posts": len(ids), "topics": len(found), "k_given": k,
             "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "seconds": {name: round(value, 3) for name, value in seconds.items()},
             "labels": "model" if labeler else "keywords"}
    with db.transaction():
        db.save_map(found, rows, state)
    return Refreshed("built", topics=len(found), placed=len(rows), seconds=seconds)


def _place(db: Storage, ids: np.ndarray, matrix: np.ndarray, changed: list[int],
           gone: list[int]) -> Refreshed:
    """Put new and changed posts on the existing map, each in its nearest topic."""
    points = {p.post_id: p for p in db.map_points()}
    row_of = {int(pid): i for i, pid in enumerate(ids)}
    moving = set(changed)
    fixed = [pid for pid in points if pid in row_of and pid not in moving]
    known = matrix[[row_of[pid] for pid in fixed]] if fixed else np.zeros((0, matrix.shape[1]))
    known_xy = np.array([[points[pid].x, points[pid].y] for pid in fixed]).reshape(-1, 2)
    topic_ids = [t.id for t in db.topics()]
    centroids = []
    for topic in topic_ids:
        members = [row_of[pid] for pid in fixed if points[pid].topic == topic]
        centre = matrix[members].mean(axis=0) if members else np.zeros(matrix.shape[1])
        centroids.append(centre / max(float(np.linalg.norm(centre)), 1e-12))
    vectors = matrix[[row_of[pid] for pid in changed]]
    xy = layout.place(vectors, known, known_xy)
    hashes = {post.id: post.content_hash for post in db.list_posts()}
    rows = []
    for i, pid in enumerate(changed):
        sims = np.array(centroids) @ vectors[i] if centroids else np.zeros(1)
        best = int(np.argmax(sims))
        rows.append((pid, topic_ids[best] if topic_ids else 1, xy[i][0], xy[i][1],
                     float(sims[best]), hashes[pid]))
    with db.transaction():
        db.save_map_points(rows, gone)
    return Refreshed("placed", placed=len(rows), removed=len(gone))


# -- reading -------------------------------------------------------------------

@dataclass
class Shape:
    """Topics and map points as stored, with each topic's size and most central posts."""
    topics: list[Topic]
    points: list[MapPoint]
    state: dict

    def sizes(self) -> dict[int, int]:
        if not hasattr(self, "_sizes"):
            self._sizes: dict[int, int] = {}
            for point in self.points:
                self._sizes[point.topic] = self._sizes.get(point.topic, 0) + 1
        return self._sizes

    def central(self, topic: int, n: int = 3) -> list[MapPoint]:
        members = [p for p in self.points if p.topic == topic]
        return sorted(members, key=lambda p: (-p.centrality, p.post_id))[:n]

    def topic(self, topic_id: int) -> Topic | None:
        return next((t for t in self.topics if t.id == topic_id), None)


def load(db: Storage) -> Shape:
    """The stored topics and map."""
    return Shape(db.topics(), db.map_points(), db.get_map_state())


# -- axes ----------------------------------------------------------------------

@dataclass
class Axis:
    """Posts placed between two ideas: score = similarity to `to` minus similarity to
    `start`, so negative leans to `start`, positive to `to`."""
    start: str
    to: str
    scores: dict[int, float]  # post id -> score

    def ranked(self) -> list[tuple[int, float]]:
        """Post ids from most `start`-like to most `to`-like."""
        return sorted(self.scores.items(), key=lambda item: (item[1], item[0]))

    def histogram(self, bins: int = 20) -> tuple[list[int], float, float]:
        """(posts per bin, lowest score, highest score)."""
        values = np.array(list(self.scores.values()), np.float64)
        if not len(values):
            return [0] * bins, 0.0, 0.0
        low, high = float(values.min()), float(values.max())
        counts, _ = np.histogram(values, bins=bins, range=(low, high if high > low else low + 1))
        return [int(c) for c in counts], low, high


def axis(db: Storage, embedder, start: str, to: str) -> Axis:
    """Score every post between two ideas, each embedded as a query."""
    ids, matrix = db.all_post_vectors()
    a, b = (np.asarray(embedder.embed_query(text), np.float32) for text in (start, to))
    scores = matrix @ b - matrix @ a if len(ids) else np.zeros(0)
    return Axis(start, to, {int(pid): float(s) for pid, s in zip(ids, scores)})


# -- as JSON (the API and the command line) ----------------------------------------

def point_json(point: MapPoint, score: float | None = None) -> dict:
    """A post on the map: where it is, its topic, and its axis score when there is an axis."""
    data = {"source": point.source, "title": point.title, "url": point.url, "date": point.date,
            "topic": point.topic, "x": round(point.x, 4), "y": round(point.y, 4)}
    if score is not None:
        data["axis"] = round(score, 4)
    return data


def topic_json(shape: Shape, topic: Topic, central: int = 3) -> dict:
    """A topic: its label (and whether the model or the keywords gave it), keywords, size,
    centre on the map and its most central posts."""
    return {"id": topic.id, "label": topic.label, "label_source": topic.label_source,
            "keywords": list(topic.keywords), "size": shape.sizes().get(topic.id, 0),
            "x": round(topic.x, 4), "y": round(topic.y, 4),
            "central": [{"source": p.source, "title": p.title, "url": p.url}
                        for p in shape.central(topic.id, central)]}
