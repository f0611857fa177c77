"""What the views share: lazily loaded models, the model gate, a few read connections, chats.

Everything loads on first use, inside the worker process (after gunicorn forks).
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field

from flask import current_app
from werkzeug.exceptions import ServiceUnavailable

from ..config import QUERY_EMBED_THREADS, Settings
from ..db import Reader, database_errors
from ..embedder import CachedQueries
from ..gate import Gate, Place
from ..llm import load_chat_model
from .limits import RateLimit


# Read connections open at once: searches are CPU-bound (two cores here), so more would
# only queue elsewhere, and each sqlite-vss connection holds its own copy of the index.
READERS = 2
READER_WAIT = 30  # seconds a request waits for a connection before a 503


@dataclass
class Turn:
    id: str
    question: str
    answer: str = ""
    sources: list = field(default_factory=list)
    quick: dict | None = None  # the quoted quick answer, when the posts had one
    segments: list = field(default_factory=list)  # the checked answer, sentence by sentence
    answered: bool = True  # False when the posts did not cover the question
    timings: dict = field(default_factory=dict)  # from the done event, shown on request
    state: str = "pending"  # pending, done, stopped, error
    error: str = ""
    stop: threading.Event = field(default_factory=threading.Event)
    place: Place | None = None  # at the model, from the form post until the answer ends
    started: bool = False  # claimed by its stream (or the no-JavaScript answer)


class Conversations:
    """Recent conversations in memory (one process serves the app), oldest evicted first."""

    def __init__(self, limit: int = 1000):
        self.limit = limit
        self._items: OrderedDict[str, list[Turn]] = OrderedDict()
        self._turns: dict[str, tuple[str, Turn]] = {}
        self._lock = threading.Lock()

    def turns(self, cid: str) -> list[Turn]:
        """The turns of a conversation ([] for an unknown id)."""
        with self._lock:
            return list(self._items.get(cid, []))

    def add(self, cid: str, question: str) -> Turn:
        """Start a new turn in the conversation (created if needed)."""
        turn = Turn(id=secrets.token_urlsafe(12), question=question)
        with self._lock:
            self._items.setdefault(cid, []).append(turn)
            self._items.move_to_end(cid)
            self._turns[turn.id] = (cid, turn)
            while len(self._items) > self.limit:
                _, dropped = self._items.popitem(last=False)
                for old in dropped:
                    self._turns.pop(old.id, None)
        return turn

    def find(self, turn_id: str) -> tuple[str, Turn] | None:
        """(conversation id, turn) for a turn id."""
        with self._lock:
            return self._turns.get(turn_id)

    def claim(self, turn: Turn) -> bool:
        """Mark the turn as being answered; False if something already answers it."""
        with self._lock:
            if turn.started:
                return False
            turn.started = True
            return True

    def unstarted(self, seconds: float) -> list[Turn]:
        """Turns holding a place whose stream has not begun for `seconds` (never opened)."""
        now = time.monotonic()
        with self._lock:
            return [turn for _, turn in self._turns.values()
                    if turn.place and turn.place.taken and not turn.started
                    and now - turn.place.since > seconds]

    def history(self, cid: str, before: Turn) -> list[dict]:
        """Earlier finished turns as chat messages, for follow-up questions."""
        messages = []
        for turn in self.turns(cid):
            if turn is before:
                break
            if turn.answer and turn.state in ("done", "stopped"):
                messages += [{"role": "user", "content": turn.question},
                             {"role": "assistant", "content": turn.answer}]
        return messages


class Services:
    """Models, gate, readers and conversations for one app."""

    def __init__(self, settings: Settings, embedder=None, llm=None):
        self.settings = settings
        self._embedder = embedder
        self._llm = llm
        self._load_lock = threading.Lock()
        self._idle: queue.LifoQueue[Reader] = queue.LifoQueue()
        self._lendable = threading.BoundedSemaphore(READERS)
        self.gate = Gate(settings.max_waiting)
        self.conversations = Conversations()
        self.ask_limit = RateLimit(settings.ask_rate)
        self.search_limit = RateLimit(settings.search_rate)

    def embedder(self):
        """The embedding model, loaded on first use."""
        with self._load_lock:
            if self._embedder is None:
                import torch

                from ..embedder import load_embedder

                torch.set_num_threads(QUERY_EMBED_THREADS)
                self._embedder = load_embedder(self.settings)
            if not isinstance(self._embedder, CachedQueries):
                self._embedder = CachedQueries(self._embedder)
            return self._embedder

    def llm(self):
        """The answering model, created on first use (its process starts on first question)."""
        with self._load_lock:
            if self._llm is None:
                self._llm = load_chat_model(self.settings)
            return self._llm

    def llm_status(self) -> dict:
        """Whether the answering model is loaded, and its process's state when it has one."""
        status = {"loaded": bool(getattr(self._llm, "loaded", False))}
        if hasattr(self._llm, "status"):
            status.update(self._llm.status())
        return status

    @contextmanager
    def reading(self):
        """Lend one of READERS read-only connections for the duration of the block.

        Read-only: nothing a web request does can change the posts (the CLI writes).
        Shared, not one per thread: each sqlite-vss connection loads the whole index
        into memory (about 300 MB at 200k passages). A connection is reopened when the
        vector index changed since it was last lent (see Reader).
        """
        if not self._lendable.acquire(timeout=READER_WAIT):
            raise ServiceUnavailable("The server is too busy to search right now; "
                                     "please try again shortly.", retry_after=5)
        reader = None
        try:
            try:
                reader = self._idle.get_nowait()
            except queue.Empty:
                reader = Reader(self.settings.db_path, readonly=True)
            yield reader.connection()
        except database_errors():
            if reader is not None:  # a database replaced or damaged under it: open afresh
                reader.close()
                reader = None
            raise
        finally:
            if reader is not None:
                self._idle.put(reader)
            self._lendable.release()


def services() -> Services:
    """The Services of the current app."""
    return current_app.extensions["ragserver"]
