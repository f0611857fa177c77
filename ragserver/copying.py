"""Copy one ragserver database into another, through the Storage protocol only.

Posts, passages and their vectors go across as they are: nothing is re-embedded, so
a blog moves between backends (SQLite, PostgreSQL) in the time its rows take to write.
Writes go out in transactions of about `commit_rows` passages, each leaving the target
consistent; a killed copy, run again, skips the posts already there whole. Related
lists are recomputed in the target (passage and post ids differ between databases).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Callable

from . import explore, related
from .storage import ModelInfo, ModelMismatchError, NewPassage, NewPost, Post, Storage, StoredPassage

VECTOR_BATCH = 500  # passage ids per passage_vectors() call (SQLite caps a query's parameters)
COUNTS = ("posts", "passages", "vectors", "index_rows")


class CopyError(RuntimeError):
    """The copy cannot be made as asked; nothing was changed."""


@dataclass
class CopySummary:
    copied: int = 0
    passages: int = 0
    skipped: int = 0
    pruned: int = 0
    related: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        """The one-line summary every copy ends with."""
        return (f"copied {self.copied} posts / {self.passages} passages, skipped {self.skipped} "
                f"already there, pruned {self.pruned}; related lists updated: {self.related}; "
                f"{self.seconds:.1f}s")


@dataclass
class _Pending:
    post: Post
    passages: list[StoredPassage]
    existing: Post | None
    drop: list[int]  # the target's passages of this post, replaced


def as_new_post(post: Post) -> NewPost:
    """A stored post's fields without its id (which differs between databases)."""
    return NewPost(**{f.name: getattr(post, f.name) for f in fields(NewPost)})


def _passage_key(passage: StoredPassage) -> tuple:
    return (passage.position, passage.heading_path, passage.anchor, passage.text,
            passage.content_hash)


def describe_model(info: ModelInfo) -> str:
    """A model record in words, for messages."""
    return (f"{info.name!r} (dimension {info.dimension}, query prefix {info.query_prefix!r}, "
            f"passage prefix {info.passage_prefix!r})")


def check_target(src: Storage, dst: Storage, *, prune: bool = False) -> list[Post]:
    """Refuse a target that cannot become a copy of `src`; return its posts `src` lacks
    (to prune). Reads only."""
    info = src.get_model_info()
    if info is not None:
        try:
            dst.check_model(info)
        except ModelMismatchError:
            raise CopyError(
                f"{dst.location} holds passages embedded with "
                f"{describe_model(dst.get_model_info())} but {src.location} was embedded with "
                f"{describe_model(info)}; copy into a new database, or `ragserver reindex` one "
                "of them to the other's model first.") from None
    sources = {post.source for post in src.list_posts()}
    extra = [post for post in dst.list_posts() if post.source not in sources]
    if extra and not prune:
        shown = ", ".join(post.source for post in extra[:3]) + (", ..." if len(extra) > 3 else "")
        raise CopyError(
            f"{dst.location} is not a copy of {src.location}: it holds {len(extra)} posts that "
            f"{src.location} does not ({shown}). Copy into a new database, or add --prune to "
            "delete them.")
    return extra


def record_model(dst: Storage, info: ModelInfo, vector_index: str) -> None:
    """Record `info` on a target that has no model yet, with `vector_index` as its index kind
    when its backend knows that kind (else the backend's own default)."""
    if dst.get_model_info() is not None:
        return
    try:
        _record_model(dst, info, vector_index)
    except ValueError:  # an index kind this backend does not have (vss on PostgreSQL)
        _record_model(dst, info, None)


def _record_model(dst: Storage, info: ModelInfo, vector_index: str | None) -> None:
    with dst.transaction():
        if dst.get_model_info() is None:
            if vector_index is not None:
                dst.set_vector_index(vector_index)
            dst.set_model_info(info)


def copy_database(src: Storage, dst: Storage, *, commit_rows: int = 1000,
                  vector_index: str = "vss", prune: bool = False,
                  on_event: Callable[[str, str], None] | None = None) -> CopySummary:
    """Make `dst` hold what `src` holds: posts, passages, vectors; then its related lists,
    topics and map.

    Posts already in `dst` whole and alike are skipped; others are (re)written with
    `src`'s passages and vectors. Posts `src` lacks are refused (CopyError, nothing
    changed) unless `prune` deletes them. on_event(kind, name): deleted, copied and
    skipped name a post; committed names "posts done/posts in all".
    """
    started = time.perf_counter()
    on_event = on_event or (lambda kind, name: None)
    commit_rows = max(1, commit_rows)
    summary = CopySummary()
    extra = check_target(src, dst, prune=prune)
    info = src.get_model_info()
    if info is not None:
        record_model(dst, info, vector_index)
    summary.pruned = _prune(dst, extra, commit_rows, on_event)
    there = {post.source: post for post in dst.list_posts()}
    posts = src.list_posts()
    batch: list[_Pending] = []
    rows = done = 0
    for post in posts:
        done += 1
        passages = src.passages_for_post(post.id)
        existing = there.get(post.source)
        drop: list[int] = []
        if existing is not None:
            kept = dst.passages_for_post(existing.id)
            if (as_new_post(existing) == as_new_post(post)
                    and list(map(_passage_key, kept)) == list(map(_passage_key, passages))):
                summary.skipped += 1
                on_event("skipped", post.source)
                continue
            drop = [passage.id for passage in kept]
        batch.append(_Pending(post, passages, existing, drop))
        rows += len(passages) + len(drop)
        if rows >= commit_rows:
            _write(src, dst, batch, summary, on_event)
            on_event("committed", f"{done}/{len(posts)}")
            batch, rows = [], 0
    if batch:
        _write(src, dst, batch, summary, on_event)
        on_event("committed", f"{done}/{len(posts)}")
    summary.related = related.refresh(dst)
    _copy_map(src, dst)
    explore.refresh(dst)  # places whatever the copied map lacks; builds one if src had none
    summary.seconds = time.perf_counter() - started
    return summary


def _copy_map(src: Storage, dst: Storage) -> None:
    """Give `dst` the topics and map of `src` (their labels too: no model is run again),
    matching posts by source id."""
    shape = explore.load(src)
    if not shape.points:
        return
    posts = {post.source: post for post in dst.list_posts()}
    rows = [(posts[p.source].id, p.topic, p.x, p.y, p.centrality, posts[p.source].content_hash)
            for p in shape.points if p.source in posts]
    with dst.transaction():
        dst.save_map(shape.topics, rows, shape.state)


def _prune(dst: Storage, extra: list[Post], commit_rows: int,
           on_event: Callable[[str, str], None]) -> int:
    """Delete the target's posts the source lacks, in transactions of about commit_rows."""
    gone = list(extra)
    while gone:
        rows, deleted = 0, []
        with dst.transaction():
            while gone and rows < commit_rows:
                deleted.append(gone.pop(0))
                rows += dst.delete_post(deleted[-1].id)
            dst.bump_generation()
        for post in deleted:
            on_event("deleted", post.source)
    return len(extra)


def _vectors(src: Storage, passages: list[StoredPassage]) -> dict:
    ids = [passage.id for passage in passages]
    vectors: dict = {}
    for start in range(0, len(ids), VECTOR_BATCH):
        vectors.update(src.passage_vectors(ids[start:start + VECTOR_BATCH]))
    return vectors


def _write(src: Storage, dst: Storage, batch: list[_Pending], summary: CopySummary,
           on_event: Callable[[str, str], None]) -> None:
    """Write a batch of posts in one transaction, with the source's vectors as they are."""
    vectors = _vectors(src, [passage for item in batch for passage in item.passages])
    for item in batch:
        missing = [passage.id for passage in item.passages if passage.id not in vectors]
        if missing:
            raise CopyError(
                f"{src.location} is inconsistent: {len(missing)} passages of "
                f"{item.post.source} have no stored vector; `ragserver ingest` its sources "
                "again before copying it (what was copied so far is kept).")
    with dst.transaction():
        index_changed = False
        for item in batch:
            if item.existing is not None:
                # A rewritten post may keep its content hash, so related.refresh would not
                # see its post vector as stale: forget it, to be recomputed from the new
                # passages.
                dst.save_post_vectors([], [item.existing.id])
            passages = [NewPassage(position=p.position, heading_path=p.heading_path,
                                   anchor=p.anchor, text=p.text, content_hash=p.content_hash,
                                   vector=vectors[p.id]) for p in item.passages]
            index_changed |= dst.write_post(as_new_post(item.post), passages, item.drop)
        if index_changed:
            dst.bump_generation()
    for item in batch:
        summary.copied += 1
        summary.passages += len(item.passages)
        on_event("copied", item.post.source)


def compare_counts(src: Storage, dst: Storage) -> list[tuple[str, int, int]]:
    """(what, in src, in dst) for every count that differs: posts, passages, vectors and
    vector index rows."""
    a, b = src.get_stats(), dst.get_stats()
    return [(name, getattr(a, name), getattr(b, name)) for name in COUNTS
            if getattr(a, name) != getattr(b, name)]
