"""What the views share: lazily loaded models, the model gate, a few read connections, chats.

Everything loads on first use, inside the worker process (after gunicorn forks).
"""

from __future__ import annotations

import queue
import threading
from contextlib import contextmanager

from flask import current_app
from werkzeug.exceptions import ServiceUnavailable

from ..config import QUERY_EMBED_THREADS, Settings
from ..db import Reader, database_errors
from ..embedder import CachedQueries
from ..gate import Gate
from ..llm import load_chat_model
from .conversations import Conversations
from .limits import RateLimit


# Read connections open at once: searches are CPU-bound (two cores here), so more would
# only queue elsewhere, and each sqlite-vss connection holds its own copy of the index.
READERS = 2
READER_WAIT = 30  # seconds a request waits for a connection before a 503


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
