"""Which retrieval finds a post from its title? Vector, keyword and hybrid, measured.

Every post of the shared corpus is ingested with its title line removed and an opaque
title ("Post N"), then searched with its real title as the query; a hit is the post
itself at rank 1 (hit@1) or within the first five posts (hit@5), passages grouped by post.

    python bench/search_quality.py [DB_PATH]
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "til"


def build(db_path: Path):
    from ragserver.ingest.pipeline import Ingester
    from ragserver.ingest.sources import Source
    from ragserver.storage import open_storage
    from ragserver.embedder import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder("sentence-transformers/all-MiniLM-L6-v2", "", "")
    conn = open_storage(db_path, create=True)
    titles = {}
    lines = []
    for number, path in enumerate(sorted(CORPUS.rglob("*.md")), 1):
        first, _, body = path.read_text().partition("\n")
        source = path.relative_to(CORPUS).as_posix()
        titles[source] = first.lstrip("# ").strip()
        lines.append(json.dumps({"id": source, "title": f"Post {number}", "content": body}))
    if not conn.get_stats().posts:
        stdin = Source("-", "stdin", "stdin", stdin=io.StringIO("\n".join(lines)))
        Ingester(conn, embedder).run([stdin])
    return conn, embedder, titles


def post_ranks(hits) -> list[str]:
    """Sources in order of their best passage."""
    return list(dict.fromkeys(h.source for h in hits))


def evaluate(conn, embedder, titles, **kwargs) -> dict:
    from ragserver.retrieve import retrieve

    at1 = at5 = 0
    for source, title in titles.items():
        ranked = post_ranks(retrieve(conn, embedder, title, 50, **kwargs))
        at1 += ranked[:1] == [source]
        at5 += source in ranked[:5]
    n = len(titles)
    return {"hit@1": round(at1 / n, 3), "hit@5": round(at5 / n, 3), "posts": n}


def main() -> None:
    db_path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/ragserver-search-quality.db")
    conn, embedder, titles = build(db_path)
    runs = [("vector", {"mode": "vector"}), ("keyword", {"mode": "keyword"})]
    for vw, kw in [(1, 1), (2, 1), (1, 2), (3, 1)]:
        runs.append((f"hybrid rrf {vw}:{kw}", {"mode": "hybrid", "vector_weight": vw,
                                              "keyword_weight": kw}))
    for name, kwargs in runs:
        print(f"{name:18} {evaluate(conn, embedder, titles, **kwargs)}")


if __name__ == "__main__":
    main()
