"""What both SQL backends ask their databases the same way: meta, posts, passages, related
posts and re-embedding bookkeeping, written once with `?` placeholders.

A backend subclasses SQLStorage and gives `_sql`/`_sql_many` (PostgreSQL turns `?` into
`%s`) and `_vector_param` (how a vector is written: a float32 blob, a pgvector value).
What differs between the databases (vectors, their index, words, transactions, readers)
stays in the backend's own module.
"""

from __future__ import annotations

import json

import numpy as np

from .records import (ExamplePost, Hit, MapPoint, ModelInfo, Post, RelatedPost, StoredPassage,
                      Topic, check_model)

POST_COLUMNS = "id, source, origin, title, url, date, tags, content_hash"


def post_from_row(row) -> Post:
    """A Post from a row of POST_COLUMNS."""
    return Post(id=row[0], source=row[1], origin=row[2], title=row[3], url=row[4],
                date=row[5], tags=tuple(json.loads(row[6])), content_hash=row[7])


def marks(values) -> str:
    """One `?` per value, for an IN (...) list."""
    return ",".join("?" * len(values))


class SQLStorage:
    """The queries SQLite and PostgreSQL share; see the module docstring."""

    def _sql(self, sql: str, parameters=()):
        raise NotImplementedError

    def _sql_many(self, sql: str, rows) -> None:
        raise NotImplementedError

    def _vector_param(self, vector: np.ndarray):
        raise NotImplementedError

    # -- meta and model ---------------------------------------------------------

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        """One value from the meta table."""
        row = self._sql("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        """Set one value in the meta table."""
        self._sql("INSERT INTO meta (key, value) VALUES (?, ?) "
                  "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def get_model_info(self) -> ModelInfo | None:
        """The embedding model recorded in the database, or None for a new database."""
        name = self.get_meta("embedding_model")
        if name is None:
            return None
        return ModelInfo(name=name, dimension=int(self.get_meta("embedding_dimension")),
                         query_prefix=self.get_meta("query_prefix", ""),
                         passage_prefix=self.get_meta("passage_prefix", ""))

    def _record_model(self, info: ModelInfo) -> None:
        """Write the model's name, dimension and prefixes into meta."""
        self.set_meta("embedding_model", info.name)
        self.set_meta("embedding_dimension", str(info.dimension))
        self.set_meta("query_prefix", info.query_prefix)
        self.set_meta("passage_prefix", info.passage_prefix)

    def check_model(self, info: ModelInfo) -> None:
        """Raise ModelMismatchError if the database was built with another model or prefixes."""
        check_model(self.get_model_info(), info)

    def get_generation(self) -> int:
        """Counter bumped by every commit that changed the vectors."""
        return int(self.get_meta("index_generation", "0"))

    # -- posts and passages -----------------------------------------------------

    def get_post(self, source: str) -> Post | None:
        """The post with this source id, if any."""
        row = self._sql(f"SELECT {POST_COLUMNS} FROM posts WHERE source = ?", (source,)).fetchone()
        return None if row is None else post_from_row(row)

    def list_posts(self) -> list[Post]:
        """Every post, by source (in code point order, whatever the database's collation)."""
        posts = [post_from_row(r) for r in self._sql(f"SELECT {POST_COLUMNS} FROM posts")]
        return sorted(posts, key=lambda post: post.source)

    def sources_for_origin(self, origin: str) -> set[str]:
        """Source ids of the posts last ingested from this origin (a folder, glob or feed)."""
        return {r[0] for r in self._sql("SELECT source FROM posts WHERE origin = ?", (origin,))}

    def move_post(self, source: str, origin: str) -> None:
        """Record that an unchanged post is now read from another origin (a moved folder)."""
        self._sql("UPDATE posts SET origin = ? WHERE source = ?", (origin, source))

    def passages_for_post(self, post_id: int) -> list[StoredPassage]:
        """A post's passages in reading order."""
        rows = self._sql(
            "SELECT id, post_id, position, heading_path, anchor, text, content_hash "
            "FROM passages WHERE post_id = ? ORDER BY position", (post_id,))
        return [StoredPassage(r[0], r[1], r[2], tuple(json.loads(r[3])), r[4], r[5], r[6])
                for r in rows]

    def example_posts(self, n: int) -> list[ExamplePost]:
        """The n most recent posts with a title (undated posts last, ties by id), for examples."""
        rows = self._sql(
            "SELECT title, url FROM posts WHERE trim(title) != '' "
            "ORDER BY date IS NULL, date DESC, id LIMIT ?", (int(n),))
        return [ExamplePost(*r) for r in rows]

    def find_post(self, *, source: str | None = None, url: str | None = None) -> Post | None:
        """A post by source id, or by its URL (ignoring a trailing slash and any #fragment)."""
        if source:
            return self.get_post(source)
        if not url:
            return None
        bare = url.split("#", 1)[0].rstrip("/")
        row = self._sql(f"SELECT {POST_COLUMNS} FROM posts WHERE url IN (?, ?) "
                        "ORDER BY id LIMIT 1", (bare, bare + "/")).fetchone()
        return None if row is None else post_from_row(row)

    def _hits(self, scores: dict[int, float], similarity: bool = False) -> list[Hit]:
        """Hits for passage ids with their scores (also their similarity, for cosine scores),
        best first."""
        if not scores:
            return []
        details = self._sql(
            "SELECT p.id, o.source, o.title, o.url, p.anchor, p.heading_path, p.text, o.date "
            f"FROM passages p JOIN posts o ON o.id = p.post_id WHERE p.id IN ({marks(scores)})",
            list(scores)).fetchall()
        hits = [Hit(r[0], r[1], r[2], r[3], r[4], tuple(json.loads(r[5])), r[6], scores[r[0]],
                    r[7], scores[r[0]] if similarity else None)
                for r in details]
        return sorted(hits, key=lambda h: h.score, reverse=True)

    # -- related posts ----------------------------------------------------------

    def stale_post_vectors(self) -> tuple[list[int], list[int]]:
        """(posts whose post vector is missing or older than the post, vectors of deleted posts)."""
        changed = [r[0] for r in self._sql(
            "SELECT o.id FROM posts o LEFT JOIN post_vectors v ON v.post_id = o.id "
            "WHERE v.content_hash IS NULL OR v.content_hash != o.content_hash ORDER BY o.id")]
        gone = [r[0] for r in self._sql(
            "SELECT post_id FROM post_vectors v WHERE NOT EXISTS "
            "(SELECT 1 FROM posts o WHERE o.id = v.post_id) ORDER BY post_id")]
        return changed, gone

    def related_lists(self) -> dict[int, list[tuple[int, float]]]:
        """Every post's stored related posts: post id -> [(related id, score)] best first."""
        lists: dict[int, list[tuple[int, float]]] = {}
        for post_id, related_id, score in self._sql(
                "SELECT post_id, related_id, score FROM related_posts ORDER BY post_id, rank"):
            lists.setdefault(post_id, []).append((related_id, score))
        return lists

    def save_post_vectors(self, rows, gone: list[int]) -> None:
        """Store (post id, content hash, vector) rows; forget the vectors of `gone` posts."""
        self._sql_many("DELETE FROM post_vectors WHERE post_id = ?", [(i,) for i in gone])
        self._sql_many(
            "INSERT INTO post_vectors (post_id, content_hash, embedding) VALUES (?, ?, ?) "
            "ON CONFLICT (post_id) DO UPDATE SET content_hash = excluded.content_hash, "
            "embedding = excluded.embedding",
            [(pid, digest, self._vector_param(v)) for pid, digest, v in rows])

    def save_related(self, lists: dict[int, list[tuple[int, float]]], gone: list[int]) -> None:
        """Replace the related posts of the posts in `lists`; drop those of deleted posts."""
        self._sql_many("DELETE FROM related_posts WHERE post_id = ?",
                       [(i,) for i in [*lists, *gone]])
        self._sql_many(
            "INSERT INTO related_posts (post_id, rank, related_id, score) VALUES (?, ?, ?, ?)",
            [(pid, rank, rid, score) for pid, ranked in lists.items()
             for rank, (rid, score) in enumerate(ranked, 1)])

    def related_for(self, post_id: int, n: int = 10) -> list[RelatedPost]:
        """A post's most similar posts, best first."""
        rows = self._sql(
            "SELECT o.source, o.title, o.url, o.date, r.score FROM related_posts r "
            "JOIN posts o ON o.id = r.related_id WHERE r.post_id = ? ORDER BY r.rank LIMIT ?",
            (post_id, n))
        return [RelatedPost(*r) for r in rows]

    # -- topics and the map -----------------------------------------------------

    def _has_map(self) -> bool:
        """False for a database made before topics existed and not written since."""
        return True

    def get_map_state(self) -> dict:
        """What the last full build of topics and the map recorded (empty before any)."""
        return json.loads(self.get_meta("map_state") or "{}")

    def map_version(self) -> str:
        """A value that changes whenever the map as drawn may: any write to the map (a
        build, or posts placed or removed), or any post written or deleted (their count and
        latest write: a title or URL can change without moving the post). Cheap next to
        reading the map, so a reader can tell when a map it drew is out of date."""
        count, latest = self._sql("SELECT count(*), max(ingested_at) FROM posts").fetchone()
        return f"{self.get_meta('map_generation', '0')} {count} {latest}"

    def topics(self) -> list[Topic]:
        """Every topic, by id (the largest first)."""
        if not self._has_map():
            return []
        rows = self._sql("SELECT id, label, label_source, keywords, x, y FROM topics ORDER BY id")
        return [Topic(r[0], r[1], r[2], tuple(json.loads(r[3])), r[4], r[5]) for r in rows]

    _MAP_POINT = ("SELECT o.id, o.source, o.title, o.url, o.date, m.topic_id, m.x, m.y, "
                  "m.centrality FROM post_map m JOIN posts o ON o.id = m.post_id ")

    def map_points(self) -> list[MapPoint]:
        """Every post placed on the map, by post id."""
        if not self._has_map():
            return []
        return [MapPoint(*r) for r in self._sql(self._MAP_POINT + "ORDER BY o.id")]

    def map_point(self, post_id: int) -> MapPoint | None:
        """One post's place on the map, if it has one."""
        if not self._has_map():
            return None
        row = self._sql(self._MAP_POINT + "WHERE m.post_id = ?", (post_id,)).fetchone()
        return None if row is None else MapPoint(*row)

    def map_near(self, point: MapPoint, n: int) -> list[MapPoint]:
        """The n posts nearest to a point on the map (not the point's own post), nearest first."""
        rows = self._sql(
            self._MAP_POINT + "WHERE m.post_id != ? ORDER BY (m.x - ?) * (m.x - ?) + "
            "(m.y - ?) * (m.y - ?), o.id LIMIT ?",
            (point.post_id, point.x, point.x, point.y, point.y, int(n)))
        return [MapPoint(*r) for r in rows]

    def map_hashes(self) -> dict[int, str]:
        """post id -> the content hash of the post when it was placed on the map."""
        if not self._has_map():
            return {}
        return dict(self._sql("SELECT post_id, content_hash FROM post_map").fetchall())

    def save_map(self, topics: list[Topic], rows, state: dict) -> None:
        """Replace every topic and placement: rows of (post id, topic id, x, y, centrality,
        content hash)."""
        self._sql("DELETE FROM topics")
        self._sql("DELETE FROM post_map")
        self._sql_many("INSERT INTO topics (id, label, label_source, keywords, x, y) "
                       "VALUES (?, ?, ?, ?, ?, ?)",
                       [(t.id, t.label, t.label_source, json.dumps(list(t.keywords)), t.x, t.y)
                        for t in topics])
        self.save_map_points(rows, [])
        self.set_meta("map_state", json.dumps(state, sort_keys=True))

    def save_map_points(self, rows, gone: list[int]) -> None:
        """Place (or move) posts on the map; forget the places of `gone` posts. Either moves
        map_version on."""
        self.set_meta("map_generation", str(int(self.get_meta("map_generation", "0")) + 1))
        self._sql_many("DELETE FROM post_map WHERE post_id = ?", [(i,) for i in gone])
        self._sql_many(
            "INSERT INTO post_map (post_id, topic_id, x, y, centrality, content_hash) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (post_id) DO UPDATE SET "
            "topic_id = excluded.topic_id, x = excluded.x, y = excluded.y, "
            "centrality = excluded.centrality, content_hash = excluded.content_hash",
            [(int(p), int(t), float(x), float(y), float(c), h) for p, t, x, y, c, h in rows])

    def post_texts(self) -> dict[int, str]:
        """post id -> its passages as one text (for topic keywords)."""
        texts: dict[int, list[str]] = {}
        for post_id, text in self._sql("SELECT post_id, text FROM passages ORDER BY post_id, "
                                       "position"):
            texts.setdefault(post_id, []).append(text)
        return {pid: "\n".join(parts) for pid, parts in texts.items()}

    # -- re-embedding with another model ----------------------------------------

    def passages_missing_reembed(self, limit: int) -> list[tuple[int, str, tuple[str, ...], str]]:
        """(passage id, post title, heading path, text) of passages not yet re-embedded."""
        rows = self._sql(
            "SELECT p.id, o.title, p.heading_path, p.text FROM passages p "
            "JOIN posts o ON o.id = p.post_id WHERE NOT EXISTS "
            "(SELECT 1 FROM reembed r WHERE r.passage_id = p.id) ORDER BY p.id LIMIT ?",
            (limit,))
        return [(r[0], r[1], tuple(json.loads(r[2])), r[3]) for r in rows]

    def save_reembed(self, model_key: str, rows) -> None:
        """Store (passage id, passage hash, vector) rows from the new model."""
        self._sql_many(
            "INSERT INTO reembed (passage_id, model, content_hash, embedding) VALUES (?, ?, ?, ?)",
            [(pid, model_key, digest, self._vector_param(v)) for pid, digest, v in rows])
