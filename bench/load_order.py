"""Embedding speed depending on whether sqlite-vss or torch enters the process first.

SQLite loads extensions with RTLD_GLOBAL; vss0 brings the system's reference BLAS
with it. If that happens before torch is imported, torch's matrix kernels are
interposed and embedding slows down many times over. ragserver's SQLite backend imports
torch first. This prints seconds to embed real passages both ways:

    python bench/load_order.py [N_PASSAGES]
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHILD = r"""
import sys, time
from pathlib import Path
n, order, corpus = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
if order == "vss-first":
    from pysqlite3 import dbapi2
    import sqlite_vss
    conn = dbapi2.connect(":memory:"); conn.enable_load_extension(True); sqlite_vss.load(conn)
else:
    from ragserver.storage.sqlite_connection import connect
    conn = connect(":memory:")
from ragserver.ingest.formats.markdown import markdown_blocks
texts = [b.text for p in sorted(corpus.rglob("*.md")) for b in markdown_blocks(p.read_text())
         if b.kind == "paragraph"][:n]
from ragserver.embedder import SentenceTransformerEmbedder
e = SentenceTransformerEmbedder("sentence-transformers/all-MiniLM-L6-v2", "", "")
e.embed_passages(texts[:8])
start = time.perf_counter(); e.embed_passages(texts)
print(time.perf_counter() - start)
"""


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    corpus = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "til"
    times = {}
    for order in ("torch-first", "vss-first"):
        out = subprocess.run([sys.executable, "-c", CHILD, str(n), order, str(corpus)],
                             capture_output=True, text=True, check=True).stdout
        times[order] = float(out.strip().splitlines()[-1])
        print(f"{order:12} {n} passages embedded in {times[order]:.2f} s")
    print(f"vss-first is {times['vss-first'] / times['torch-first']:.1f}x slower")


if __name__ == "__main__":
    main()
