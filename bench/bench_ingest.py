"""Ingest throughput: `ragserver ingest` beside a bare SentenceTransformer.encode of the same texts.

Measured in-process, models loaded beforehand (load time is excluded on both sides).
Each repeat copies the posts (quick: two topic folders; full: all 282) to a temporary
folder and runs `ingest.pipeline.Ingester` on it into a fresh database, as `ragserver
ingest FOLDER` does: reading, chunking with token counts, embedding, SQL and sqlite-vss
writes, related posts. The baseline is one `SentenceTransformer.encode` call, same
packaged MiniLM and batch size, on exactly the texts ragserver embedded (read back from
the database: passage prefix + `embedding_text(title, headings, text)`). Then the same
ingest again with nothing changed, and once more after appending a paragraph to one post.
A thin wrapper around the embedder splits the first run's time into embedding, token
counting (for chunking) and everything else.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from common import COMPARE_HEADERS, CORPUS, MODEL, Figure, Section, compare, table, timed

QUICK_TOPICS = ["sqlite", "github-actions"]
EDITED_POST = "sqlite/blob-literals.md"
APPENDED = "\n\nUpdate: a paragraph appended by the benchmark, to measure re-ingesting an edit.\n"


class TimedEmbedder:
    """The ragserver embedder, adding up the seconds spent in each kind of call."""

    def __init__(self, embedder):
        self.embedder = embedder
        self.info = embedder.info
        self.max_tokens = embedder.max_tokens
        self.seconds = {"embed": 0.0, "count_tokens": 0.0}

    def _timed(self, kind: str, fn, arg):
        seconds, result = timed(lambda: fn(arg))
        self.seconds[kind] += seconds
        return result

    def count_tokens(self, texts):
        return self._timed("count_tokens", self.embedder.count_tokens, texts)

    def embed_passages(self, texts):
        return self._timed("embed", self.embedder.embed_passages, texts)

    def embed_query(self, text):
        return self.embedder.embed_query(text)


def copy_posts(quick: bool, to: Path) -> Path:
    """A private copy of the posts to ingest (and edit)."""
    if not quick:
        return Path(shutil.copytree(CORPUS, to))
    for topic in QUICK_TOPICS:
        shutil.copytree(CORPUS / topic, to / topic)
    return to


def ingest(folder: Path, db_path: Path, embedder, commit_rows: int):
    """`ragserver ingest FOLDER --db DB_PATH`, in-process; returns the run's Summary."""
    from ragserver.ingest.pipeline import Ingester
    from ragserver.ingest.sources import open_source
    from ragserver.storage import open_storage

    conn = open_storage(db_path, create=True)
    try:
        return Ingester(conn, embedder, commit_rows=commit_rows).run([open_source(str(folder))])
    finally:
        conn.close()


def embedded_texts(db_path: Path, prefix: str) -> list[str]:
    """The texts ragserver embedded, rebuilt from the stored passages."""
    from ragserver.ingest.chunking import embedding_text
    from ragserver.storage import open_storage

    conn = open_storage(db_path)
    rows = conn.conn.execute("SELECT o.title, p.heading_path, p.text FROM passages p "
                             "JOIN posts o ON o.id = p.post_id ORDER BY p.id").fetchall()
    conn.close()
    return [prefix + embedding_text(title, json.loads(path), text) for title, path, text in rows]


def run(quick: bool) -> Section:
    from ragserver.config import Settings
    from ragserver.storage.sqlite_connection import connect

    connect(":memory:").close()  # torch before sqlite-vss (bench/load_order.py)
    import torch
    from sentence_transformers import SentenceTransformer

    from ragserver.config import load_settings

    # The threads `ragserver ingest` embeds with (RAGSERVER_EMBED_THREADS), for both sides.
    threads = load_settings().embed_thread_count
    torch.set_num_threads(threads)

    from ragserver.embedder import SentenceTransformerEmbedder, resolve_model

    batch, commit_rows = Settings.embed_batch_size, Settings.commit_rows
    embedder = TimedEmbedder(SentenceTransformerEmbedder(MODEL, "", "", batch_size=batch))
    bare = SentenceTransformer(resolve_model(MODEL), device="cpu")
    for model in (embedder.embedder.model, bare):  # first calls allocate; keep them untimed
        model.encode(["warm up " * 200] * batch, batch_size=batch)

    repeats = 2 if quick else 3
    first, baseline, again, edited = [], [], [], []
    passages = embedded_on_edit = 0
    phases = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="ragserver-bench-") as tmp:
            folder = copy_posts(quick, Path(tmp) / "posts")
            db_path = Path(tmp) / "bench.db"
            embedder.seconds = dict.fromkeys(embedder.seconds, 0.0)
            seconds, summary = timed(lambda: ingest(folder, db_path, embedder, commit_rows))
            phases.append({**embedder.seconds, "total": seconds})
            texts = embedded_texts(db_path, embedder.info.passage_prefix)
            assert len(texts) == summary.embedded, (len(texts), summary.embedded)
            bare_seconds, _ = timed(lambda: bare.encode(
                texts, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True,
                show_progress_bar=False))
            passages = len(texts)
            first.append(seconds)
            baseline.append(bare_seconds)
            again.append(timed(lambda: ingest(folder, db_path, embedder, commit_rows))[0])
            with open(folder / EDITED_POST, "a") as post:
                post.write(APPENDED)
            seconds, summary = timed(lambda: ingest(folder, db_path, embedder, commit_rows))
            edited.append(seconds)
            embedded_on_edit = summary.embedded

    rate = Figure("ragserver ingest, fresh database", "passages/s", [passages / s for s in first])
    bare_rate = Figure("bare `SentenceTransformer.encode`, same texts", "passages/s",
                       [passages / s for s in baseline])
    first_run = Figure("first run", "s", first)
    rerun = Figure("second run, nothing changed", "s", again)
    edit = Figure(f"one post edited ({embedded_on_edit} passages embedded)", "s", edited)
    embed = Figure("of which embedding calls", "s", [p["embed"] for p in phases])
    count = Figure("of which token counting (chunking)", "s", [p["count_tokens"] for p in phases])
    rest = Figure("of which the rest (read, parse, SQL, index, related)", "s",
                  [p["total"] - p["embed"] - p["count_tokens"] for p in phases])
    rows = [compare(rate, bare_rate), compare(rerun, first_run, 2), compare(edit, first_run, 2),
            compare(embed, Figure("bare encode", "s", baseline), 2),
            compare(count, first_run, 2), compare(rest, first_run, 2)]
    speed = rate.median / bare_rate.median
    fraction = rerun.median / first_run.median
    posts = "all 282 posts" if not quick else f"the {', '.join(QUICK_TOPICS)} folders"
    markdown = "\n".join([
        f"`ragserver ingest` of {posts} ({passages:,} passages) into a fresh database, "
        f"in-process with the models already loaded, against one bare "
        f"`SentenceTransformer.encode` call (packaged all-MiniLM-L6-v2, batch size {batch}) "
        f"on exactly the texts ragserver embedded, both on {threads} torch thread(s) (what "
        f"`ragserver ingest` uses by default here: RAGSERVER_EMBED_THREADS, one per two "
        f"cores); then the same ingest with nothing changed, and after appending a paragraph "
        f"to one post. {repeats} repeats, each on a fresh copy.",
        "", table(COMPARE_HEADERS, rows), "",
        f"- Goal: ingest ≥ 0.9× bare encode: **{'met' if speed >= 0.9 else 'not met'}** "
        f"({speed:.2f}×).",
        f"- Goal: an unchanged rerun ≤ 5% of the first run: "
        f"**{'met' if fraction <= 0.05 else 'not met'}** ({fraction:.1%}).",
    ])
    return Section("Ingest", markdown, {
        "posts": posts, "passages": passages, "batch_size": batch, "repeats": repeats,
        "torch_threads": threads,
        "ingest_s": first, "bare_encode_s": baseline, "unchanged_s": again, "edited_s": edited,
        "edited_passages_embedded": embedded_on_edit, "phases_s": phases,
        "speed_ratio": round(speed, 3), "unchanged_fraction": round(fraction, 4)})
