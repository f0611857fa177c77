"""What readers do, kept apart from the posts: conversations and their answers (with
sources, quick answers, support marks and timings), feedback on answers, and searches
that found nothing.

The posts database stays read-only to the web app; this store is the app's only write
path. With SQLite it is its own file (`activity.db` beside the posts, WAL, one short
transaction per write, shared by every worker of the machine); with PostgreSQL it is a set
of `activity_*` tables in the same database, written through a connection of its own.

Writing activity never stands in a reader's way: a write that fails (a full disk, a
locked or unreachable database) is logged and counted, and the answer goes on. No IP
address or user agent is stored; rows older than RAGSERVER_ACTIVITY_DAYS are pruned.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("ragserver.activity")

DAY = 86400.0
PRUNE_EVERY = 3600.0  # seconds between a worker's automatic prunes
OFF = ("", "off", "none")

# One schema for both backends: REAL and TEXT (JSON) columns mean the same to each.
TABLES = [
    """CREATE TABLE IF NOT EXISTS activity_turns (
        id TEXT PRIMARY KEY,           -- the permalink's id: random, 96 bits
        conversation TEXT NOT NULL,
        via TEXT NOT NULL,             -- chat, api, openai, mcp
        question TEXT NOT NULL,
        answer TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL,           -- pending, done, stopped, error
        answered INTEGER,              -- 0: the posts did not cover the question
        similarity REAL,               -- cosine similarity of the closest passage
        sources TEXT NOT NULL DEFAULT '[]',
        quick TEXT,
        segments TEXT NOT NULL DEFAULT '[]',
        timings TEXT NOT NULL DEFAULT '{}',
        error TEXT NOT NULL DEFAULT '',
        asked REAL NOT NULL,
        finished REAL,
        vector BLOB,                   -- the question's float32 vector, for the report
        vector_model TEXT)             -- the embedding model that made it""",
    "CREATE INDEX IF NOT EXISTS activity_turns_conversation ON activity_turns (conversation, asked)",
    "CREATE INDEX IF NOT EXISTS activity_turns_asked ON activity_turns (asked)",
    """CREATE TABLE IF NOT EXISTS activity_feedback (
        turn TEXT NOT NULL,
        vote INTEGER NOT NULL,         -- 1 up, -1 down
        comment TEXT NOT NULL DEFAULT '',
        given REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS activity_feedback_turn ON activity_feedback (turn)",
    "CREATE INDEX IF NOT EXISTS activity_feedback_given ON activity_feedback (given)",
    """CREATE TABLE IF NOT EXISTS activity_searches (
        query TEXT NOT NULL,
        mode TEXT NOT NULL,
        searched REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS activity_searches_searched ON activity_searches (searched)",
]
TURN_COLUMNS = ("id", "conversation", "via", "question", "answer", "state", "answered",
                "similarity", "sources", "quick", "segments", "timings", "error", "asked",
                "finished")
JSON_COLUMNS = {"sources", "quick", "segments", "timings"}
MAX_COMMENT_CHARS = 2000


class ActivityUnavailable(Exception):
    """The activity store cannot be read or written (its message says why)."""


@dataclass(frozen=True)
class StoredTurn:
    """One question and its answer as the store keeps it."""

    id: str
    conversation: str
    via: str
    question: str
    answer: str
    state: str
    answered: bool | None
    similarity: float | None
    sources: list
    quick: dict | None
    segments: list
    timings: dict
    error: str
    asked: float
    finished: float | None

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in TURN_COLUMNS}


def activity_target(settings) -> str:
    """Where activity goes: RAGSERVER_ACTIVITY_DB, else activity.db beside a SQLite posts
    file, else the PostgreSQL database itself; "" when turned off."""
    chosen = settings.activity_db.strip()
    if chosen.lower() in OFF[1:]:
        return ""
    if chosen:
        return chosen if "://" in chosen else str(Path(chosen).expanduser())
    database = settings.database
    if "://" in database:
        return database
    return str(Path(database).with_name("activity.db"))


def open_activity(settings) -> "Activity | None":
    """The activity store the settings name (nothing is opened until first use), or None
    when RAGSERVER_ACTIVITY_DB is off."""
    target = activity_target(settings)
    return Activity(target, days=settings.activity_days) if target else None


def _describe(target: str) -> str:
    from .storage import describe

    return describe(target)


class Activity:
    """The store: writes that never raise, reads that raise ActivityUnavailable."""

    def __init__(self, target: str, days: int = 90):
        self.target = target
        self.postgres = target.startswith(("postgresql://", "postgres://"))
        self.days = days
        self.failures = 0  # writes lost since this process started
        self.last_error = ""  # the latest failure's message, kept after writing works again
        self.last_error_at = 0.0
        self.last_write_ok = True
        self._local = threading.local()
        self._ready = False
        self._ready_lock = threading.Lock()
        self._pruned = 0.0

    @property
    def label(self) -> str:
        return _describe(self.target)

    # -- connections ------------------------------------------------------------

    def _connect(self):
        if self.postgres:
            import psycopg

            return psycopg.connect(self.target, autocommit=True, connect_timeout=5)
        Path(self.target).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.target, timeout=10, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        # WAL: workers read while one writes; a kill -9 loses at most the write in flight.
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _conn(self):
        """This thread's connection (a new one after fork or after an error)."""
        held = getattr(self._local, "conn", None)
        if held is not None and held[0] == os.getpid():
            return held[1]
        conn = self._connect()
        self._local.conn = (os.getpid(), conn)
        if not self._ready:
            with self._ready_lock:
                if not self._ready:
                    self._create(conn)
                    self._ready = True
        return conn

    def _create(self, conn) -> None:
        for statement in TABLES:
            if self.postgres:
                statement = statement.replace(" REAL", " double precision")
                statement = statement.replace(" BLOB", " bytea")
            conn.execute(statement)

    def _drop_connection(self) -> None:
        held = getattr(self._local, "conn", None)
        self._local.conn = None
        if held is not None and held[0] == os.getpid():
            try:
                held[1].close()
            except Exception:
                pass

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def _errors(self) -> tuple:
        if self.postgres:
            import psycopg

            return (sqlite3.Error, OSError, psycopg.Error)
        return (sqlite3.Error, OSError)

    def _run(self, statements: list[tuple[str, tuple]]) -> int:
        """Run statements in one transaction; rows changed by the last one."""
        conn = self._conn()
        if self.postgres:
            with conn.transaction():
                for sql, params in statements:
                    cursor = conn.execute(self._sql(sql), params)
            return cursor.rowcount
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                cursor = conn.execute(sql, params)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite may have rolled back already (a full disk)
                conn.execute("ROLLBACK")
            raise
        return cursor.rowcount

    def write(self, *statements: tuple[str, tuple]) -> int | None:
        """Run one transaction of writes; None (logged, counted) when it fails."""
        try:
            changed = self._run(list(statements))
        except self._errors() as error:
            self._drop_connection()
            self.failures += 1
            self.last_error = f"{type(error).__name__}: {error}"
            self.last_error_at, self.last_write_ok = time.time(), False
            log.warning("activity not recorded in %s (%s): %s", self.label,
                        self.failures, self.last_error)
            return None
        self.last_write_ok = True
        self._maybe_prune()
        return changed

    def read(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of a query; ActivityUnavailable when the store cannot be read."""
        try:
            return [tuple(row) for row in self._conn().execute(self._sql(sql), params).fetchall()]
        except self._errors() as error:
            self._drop_connection()
            raise ActivityUnavailable(f"cannot read the activity store {self.label}: "
                                      f"{error}") from error

    def status(self) -> dict:
        """For /healthz: where activity goes, whether the last write worked, and the writes
        lost since this process started with the latest failure."""
        return {"store": self.label, "retention_days": self.days,
                "last_write_ok": self.last_write_ok, "failed_writes": self.failures,
                "last_error": self.last_error or None,
                "last_error_at": round(self.last_error_at, 3) if self.last_error else None}

    def close(self) -> None:
        self._drop_connection()

    # -- turns --------------------------------------------------------------------

    def start_turn(self, turn_id: str, conversation: str, question: str, via: str) -> None:
        """A question was asked: the turn exists (pending) from now on."""
        self.write(("INSERT INTO activity_turns (id, conversation, via, question, state, asked) "
                    "VALUES (?, ?, ?, ?, 'pending', ?)",
                    (turn_id, conversation, via, question, time.time())))

    def finish_turn(self, turn_id: str, *, answer: str, state: str, answered: bool | None,
                    similarity: float | None, sources: list, quick: dict | None,
                    segments: list, timings: dict, error: str,
                    vector: tuple[bytes, str] | None = None) -> None:
        """The turn's answer ended (done, stopped or failed): keep what it became.
        `vector`: the question's float32 vector and the model that made it."""
        blob, model = vector or (None, None)
        self.write(("UPDATE activity_turns SET answer = ?, state = ?, answered = ?, "
                    "similarity = ?, sources = ?, quick = ?, segments = ?, timings = ?, "
                    "error = ?, finished = ?, vector = ?, vector_model = ? WHERE id = ?",
                    (answer, state, None if answered is None else int(answered), similarity,
                     _json(sources), None if quick is None else _json(quick), _json(segments),
                     _json(timings), error, time.time(), blob, model, turn_id)))

    def question_vectors(self, since: float, model: str) -> dict[str, bytes]:
        """{question: float32 bytes} of the questions asked since `since` whose vector
        `model` made when they were asked."""
        rows = self.read("SELECT question, vector FROM activity_turns WHERE asked >= ? "
                         "AND vector IS NOT NULL AND vector_model = ?", (since, model))
        return {question: bytes(vector) for question, vector in rows}

    def turn(self, turn_id: str) -> StoredTurn | None:
        rows = self.read(f"SELECT {', '.join(TURN_COLUMNS)} FROM activity_turns WHERE id = ?",
                         (turn_id,))
        return _turn(rows[0]) if rows else None

    def conversation(self, conversation: str) -> list[StoredTurn]:
        rows = self.read(f"SELECT {', '.join(TURN_COLUMNS)} FROM activity_turns "
                         "WHERE conversation = ? ORDER BY asked, id", (conversation,))
        return [_turn(row) for row in rows]

    def turns_since(self, since: float) -> list[StoredTurn]:
        rows = self.read(f"SELECT {', '.join(TURN_COLUMNS)} FROM activity_turns "
                         "WHERE asked >= ? ORDER BY asked, id", (since,))
        return [_turn(row) for row in rows]

    # -- feedback and searches ----------------------------------------------------------

    def add_feedback(self, turn_id: str, vote: int, comment: str) -> bool:
        """A reader's thumbs up (1) or down (-1), with an optional comment; False when the
        turn is unknown or the write failed."""
        changed = self.write((
            "INSERT INTO activity_feedback (turn, vote, comment, given) "
            "SELECT id, ?, ?, ? FROM activity_turns WHERE id = ?",
            (vote, comment[:MAX_COMMENT_CHARS], time.time(), turn_id)))
        return bool(changed)

    def feedback_since(self, since: float) -> list[dict]:
        rows = self.read("SELECT turn, vote, comment, given FROM activity_feedback "
                         "WHERE given >= ? ORDER BY given", (since,))
        return [{"turn": t, "vote": v, "comment": c, "given": g} for t, v, c, g in rows]

    def votes(self, turn_id: str) -> dict:
        rows = self.read("SELECT vote, count(*) FROM activity_feedback WHERE turn = ? "
                         "GROUP BY vote", (turn_id,))
        counts = dict(rows)
        return {"up": counts.get(1, 0), "down": counts.get(-1, 0)}

    def record_empty_search(self, query: str, mode: str) -> None:
        """A search that found nothing (the only searches kept)."""
        self.write(("INSERT INTO activity_searches (query, mode, searched) VALUES (?, ?, ?)",
                    (query, mode, time.time())))

    def empty_searches_since(self, since: float) -> list[dict]:
        rows = self.read("SELECT query, mode, searched FROM activity_searches "
                         "WHERE searched >= ? ORDER BY searched", (since,))
        return [{"query": q, "mode": m, "searched": s} for q, m, s in rows]

    # -- retention ------------------------------------------------------------------

    def prune(self, days: int | None = None, now: float | None = None) -> dict:
        """Delete what is older than `days` (default: the setting); counts of rows removed.
        Raises ActivityUnavailable when the store cannot be written."""
        days = self.days if days is None else days
        cutoff = (time.time() if now is None else now) - days * DAY
        removed = {}
        try:
            for table, column in (("activity_feedback", "given"), ("activity_turns", "asked"),
                                  ("activity_searches", "searched")):
                if table == "activity_feedback":  # feedback goes with its turn, or by its age
                    sql = ("DELETE FROM activity_feedback WHERE given < ? OR turn IN "
                           "(SELECT id FROM activity_turns WHERE asked < ?)")
                    params = (cutoff, cutoff)
                else:
                    sql, params = f"DELETE FROM {table} WHERE {column} < ?", (cutoff,)
                removed[table.removeprefix("activity_")] = self._run([(sql, params)])
        except self._errors() as error:
            self._drop_connection()
            raise ActivityUnavailable(f"cannot prune the activity store {self.label}: "
                                      f"{error}") from error
        self._pruned = time.monotonic()
        return removed

    def _maybe_prune(self) -> None:
        if self.days <= 0 or time.monotonic() - self._pruned < PRUNE_EVERY:
            return
        self._pruned = time.monotonic()
        try:
            self.prune()
        except ActivityUnavailable as error:
            log.warning("%s", error)

    def export(self, since: float = 0.0):
        """Every kept record as dicts with a "type" (turn, feedback, empty_search), oldest first."""
        for turn in self.turns_since(since):
            yield {"type": "turn", **turn.as_dict()}
        for feedback in self.feedback_since(since):
            yield {"type": "feedback", **feedback}
        for search in self.empty_searches_since(since):
            yield {"type": "empty_search", **search}


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _turn(row: tuple) -> StoredTurn:
    values = dict(zip(TURN_COLUMNS, row))
    for name in JSON_COLUMNS:
        if values[name] is not None:
            values[name] = json.loads(values[name])
    if values["answered"] is not None:
        values["answered"] = bool(values["answered"])
    return StoredTurn(**values)


def parse_age(text: str) -> float:
    """"30d", "12h", "90m" or a number of days, as seconds; ValueError for anything else."""
    text = text.strip().lower()
    units = {"d": DAY, "h": 3600.0, "m": 60.0, "w": 7 * DAY}
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, DAY)
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not an age: {text!r} (say 30d, 12h, 2w or a number of days)") from None
    if value < 0:
        raise ValueError(f"an age cannot be negative: {text!r}")
    return value * unit
