"""Embed-and-write: keep the database in step with the sources, incrementally.

Unchanged posts (same content hash) cost one SELECT. A changed post keeps the
vectors of passages whose text and context did not change and embeds only the
rest. Writes go out in transactions of about `commit_rows` index rows, each of
which leaves the database consistent, so a killed run loses at most one batch
and a rerun finishes the job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from ragserver import explore, related
from ragserver.embedder import Embedder
from ragserver.storage import KeptPassage, ModelInfo, NewPassage, NewPost, Post, Storage

from .chunking import CHUNKER_VERSION, Passage, build_passages, embedding_text
from .sources import Document, Skipped, Source

log = logging.getLogger("ragserver.ingest")

EMBED_CHUNK = 256  # passages gathered (across posts) before embedding and writing them
EMBED_STEP = 64  # passages per call to the model, so progress shows while embedding


@dataclass
class Summary:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    embedded: int = 0
    reused: int = 0
    related: int = 0
    topics: str = "topics unchanged"
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        """The one-line summary every run ends with."""
        return (f"posts: {self.added} added, {self.updated} updated, {self.unchanged} unchanged, "
                f"{self.deleted} deleted, {len(self.skipped)} skipped; "
                f"passages embedded: {self.embedded}; related lists updated: {self.related}; "
                f"{self.topics}; {self.seconds:.1f}s")


@dataclass
class _Pending:
    doc: Document
    origin: str
    content_hash: str
    passages: list[Passage]
    hashes: list[str]
    existing: Post | None
    reuse: dict[int, int]  # position in new passages -> id of the stored passage it keeps
    drop: list[int]  # stored passage ids no longer present
    embed_texts: list[str]  # for passages not in `reuse`, in order


def post_hash(doc: Document, model: ModelInfo) -> str:
    """Everything that decides a post's stored passages, hashed."""
    payload = [CHUNKER_VERSION, model.name, model.passage_prefix, doc.title, doc.url, doc.date,
               list(doc.tags), [[b.kind, b.text, b.level, b.anchor] for b in doc.blocks]]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode("utf-8")).hexdigest()


def passage_hash(text_to_embed: str, model: ModelInfo) -> str:
    """Identity of a passage's vector: model, prefix and the exact text embedded."""
    payload = json.dumps([model.name, model.passage_prefix, text_to_embed], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def prepare_model(db: Storage, embedder: Embedder, vector_index: str | None = None) -> None:
    """Record the model and index kind (default: the backend's own) on a new database;
    refuse one built with another model."""
    if db.get_model_info() is None:
        with db.transaction():
            if db.get_model_info() is None:
                db.set_vector_index(vector_index or db.VECTOR_INDEXES[0])
                db.set_model_info(embedder.info)
    db.check_model(embedder.info)


class Ingester:
    """One ingest run against one open database."""

    def __init__(self, db: Storage, embedder: Embedder, *, commit_rows: int = 1000,
                 on_event: Callable[[str, str], None] | None = None,
                 vector_index: str | None = None, labeler=None, threads: int = 1):
        self.db = db
        self.labeler = labeler  # names rebuilt topics (ragserver.explore.topics.Labeler)
        self.threads = threads
        self.embedder = embedder
        self.commit_rows = max(1, commit_rows)
        self.on_event = on_event or (lambda kind, name: None)
        self.summary = Summary()
        self.pending: list[_Pending] = []
        self.pending_rows = 0
        self.pending_origin_moves: list[tuple[str, str]] = []
        prepare_model(db, embedder, vector_index)
        self.prefix_tokens = embedder.count_tokens([embedder.info.passage_prefix])[0] \
            if embedder.info.passage_prefix else 0

    # -- the run --------------------------------------------------------------

    def run(self, sources: Iterable[Source], prune: bool | None = None) -> Summary:
        """Ingest every source; prune=None prunes folder and glob sources only."""
        started = time.perf_counter()
        seen_this_run: set[str] = set()
        for source in sources:
            seen: set[str] = set()
            for item in source.read():
                if isinstance(item, Skipped):
                    self._skip(item)
                    if item.source:
                        seen.add(item.source)
                    continue
                if item.source in seen_this_run:
                    self._skip(Skipped(item.source, "the same source id was already read in "
                                       "this run; kept the first", None))
                    continue
                seen.add(item.source)
                seen_this_run.add(item.source)
                self._add(item, source.origin)
                self.on_event("read", item.source)
            self.flush()
            should_prune = source.prunable if prune is None else prune
            if should_prune and source.listed:
                self._prune(source.origin, seen)
        self.flush()
        self.summary.related = related.refresh(self.db)
        self.summary.topics = explore.refresh(self.db, labeler=self.labeler,
                                              threads=self.threads).line()
        self.summary.seconds = time.perf_counter() - started
        return self.summary

    def _skip(self, item: Skipped) -> None:
        self.summary.skipped.append(item)
        log.warning("skipped %s: %s", item.name, item.reason)
        self.on_event("read", item.name)

    def _add(self, doc: Document, origin: str) -> None:
        info = self.embedder.info
        digest = post_hash(doc, info)
        existing = self.db.get_post(doc.source)
        if existing is not None and existing.content_hash == digest:
            self.summary.unchanged += 1
            if existing.origin != origin:
                self.pending_origin_moves.append((doc.source, origin))
            return
        passages = build_passages(list(doc.blocks), doc.title, self.embedder.count_tokens,
                                  self.embedder.max_tokens, self.prefix_tokens)
        if not passages:
            self._skip(Skipped(doc.source, "empty: no passages", doc.source))
            return
        texts = [embedding_text(doc.title, p.heading_path, p.text) for p in passages]
        hashes = [passage_hash(t, info) for t in texts]
        reuse: dict[int, int] = {}
        drop: list[int] = []
        if existing is not None:
            by_hash: dict[str, list[int]] = defaultdict(list)
            for old in self.db.passages_for_post(existing.id):
                by_hash[old.content_hash].append(old.id)
            for position, digest_ in enumerate(hashes):
                if by_hash.get(digest_):
                    reuse[position] = by_hash[digest_].pop(0)
            drop = [pid for ids in by_hash.values() for pid in ids]
        embed_texts = [t for i, t in enumerate(texts) if i not in reuse]
        self.pending.append(_Pending(doc, origin, digest, passages, hashes, existing, reuse, drop,
                                     embed_texts))
        rows = len(embed_texts) + len(drop)
        self.pending_rows += rows
        if (self.pending_rows >= self.commit_rows
                or sum(len(p.embed_texts) for p in self.pending) >= EMBED_CHUNK):
            self.flush()

    # -- writing --------------------------------------------------------------

    def flush(self) -> None:
        """Embed what is pending and write it in transactions of about commit_rows index rows."""
        if not self.pending and not self.pending_origin_moves:
            return
        texts = [t for p in self.pending for t in p.embed_texts]
        # Longest first, as sentence-transformers orders one call: slicing texts in post
        # order mixes lengths within a batch and pads ~13% more tokens (bench_ingest).
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        vectors = np.zeros((len(texts), self.embedder.info.dimension), np.float32)
        for start in range(0, len(order), EMBED_STEP):
            chosen = order[start:start + EMBED_STEP]
            vectors[chosen] = self.embedder.embed_passages([texts[i] for i in chosen])
            self.on_event("embedded", str(len(chosen)))
        offset = 0
        batch: list[tuple[_Pending, np.ndarray]] = []
        rows = 0
        for pending in self.pending:
            count = len(pending.embed_texts)
            batch.append((pending, vectors[offset:offset + count]))
            offset += count
            rows += count + len(pending.drop)
            if rows >= self.commit_rows:
                self._write(batch)
                batch, rows = [], 0
        if batch or self.pending_origin_moves:
            self._write(batch)
        self.pending = []
        self.pending_rows = 0

    def _write(self, batch: list[tuple[_Pending, np.ndarray]]) -> None:
        with self.db.transaction():
            index_changed = False
            for source, origin in self.pending_origin_moves:
                self.db.move_post(source, origin)
            for pending, vectors in batch:
                index_changed |= self._write_post(pending, vectors)
            if index_changed:
                self.db.bump_generation()
        self.pending_origin_moves = []
        for pending, vectors in batch:
            self.summary.embedded += len(vectors)
            self.summary.reused += len(pending.reuse)
            if pending.existing is None:
                self.summary.added += 1
                self.on_event("added", pending.doc.source)
            else:
                self.summary.updated += 1
                self.on_event("updated", pending.doc.source)

    def _write_post(self, pending: _Pending, vectors: np.ndarray) -> bool:
        doc = pending.doc
        fresh = iter(vectors)
        passages: list[NewPassage | KeptPassage] = [
            KeptPassage(pending.reuse[position], position, passage.heading_path, passage.anchor)
            if position in pending.reuse else
            NewPassage(position=position, heading_path=passage.heading_path,
                       anchor=passage.anchor, text=passage.text,
                       content_hash=pending.hashes[position], vector=next(fresh))
            for position, passage in enumerate(pending.passages)]
        post = NewPost(source=doc.source, origin=pending.origin, title=doc.title, url=doc.url,
                       date=doc.date, tags=tuple(doc.tags), content_hash=pending.content_hash)
        return self.db.write_post(post, passages, pending.drop)

    def _prune(self, origin: str, seen: set[str]) -> None:
        gone = sorted(self.db.sources_for_origin(origin) - seen)
        while gone:
            rows = 0
            with self.db.transaction():
                while gone and rows < self.commit_rows:
                    source = gone.pop(0)
                    rows += self.db.delete_post(self.db.get_post(source).id)
                    self.summary.deleted += 1
                    self.on_event("deleted", source)
                self.db.bump_generation()


def reembed_all(db: Storage, embedder: Embedder, commit_rows: int = 1000,
                on_batch: Callable[[int], None] | None = None,
                vector_index: str | None = None) -> int:
    """Re-embed every stored passage with `embedder` and switch the database to it.

    New vectors are written to a side table first, in committed batches (a killed
    run resumes there); the switch to the new model is one transaction; then the
    index is rebuilt.
    """
    info = embedder.info
    model_key = json.dumps(dataclasses.asdict(info), sort_keys=True)
    with db.transaction():
        db.start_reembed(model_key)
    done = 0
    while rows := db.passages_missing_reembed(limit=EMBED_CHUNK):
        texts = [embedding_text(title, path, text) for _, title, path, text in rows]
        vectors = embedder.embed_passages(texts)
        with db.transaction():
            db.save_reembed(model_key, [(row[0], passage_hash(t, info), v)
                                                 for row, t, v in zip(rows, texts, vectors)])
        done += len(rows)
        if on_batch:
            on_batch(done)
    with db.transaction():
        # Posts hash the model name: the next ingest re-chunks for the new model's
        # window, reusing every vector whose passage comes out the same.
        db.switch_model(info)
    db.rebuild_index(commit_rows, vector_index=vector_index)
    related.refresh(db)
    explore.refresh(db, rebuild=True)
    return done
