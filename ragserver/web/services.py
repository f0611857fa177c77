"""What the views share: the models, loaded lazily, and the app's gate, read connections,
conversations and the activity store, rate limits and the drawn map.

Models load on first use, inside the worker process (after gunicorn forks).
"""

from __future__ import annotations

import threading

from flask import current_app

from ..activity import open_activity
from ..config import QUERY_EMBED_THREADS, Settings
from ..embedder import CachedQueries
from ..gate import Gate
from ..llm import load_chat_model
from ..storage import shared_rate_limits
from .conversations import Conversations
from .limits import RateLimit
from .pool import ReaderPool


ADMIN_TRIES = 10  # /admin sign-ins a minute from one address: a token cannot be guessed by trying


class Services:
    """Models, gate, readers, conversations and the MCP server for one app."""

    def __init__(self, settings: Settings, embedder=None, llm=None):
        self.settings = settings
        self._embedder = embedder
        self._llm = llm
        self._load_lock = threading.Lock()
        self.pool = ReaderPool(settings.database)
        self.gate = Gate(settings.max_waiting)
        self.activity = open_activity(settings)  # None when RAGSERVER_ACTIVITY_DB=off
        self.conversations = Conversations(self.activity)
        shared = shared_rate_limits(settings.database)
        self.ask_limit = RateLimit(settings.ask_rate, shared=shared, name="ask")
        self.search_limit = RateLimit(settings.search_rate, shared=shared, name="search")
        self.feedback_limit = RateLimit(settings.feedback_rate, shared=shared, name="feedback")
        self.admin_limit = RateLimit(ADMIN_TRIES, shared=shared, name="admin")
        self.drawn_map = None  # the /explore map as last read and drawn (web/explore.py)
        self.mcp_bridge = None  # the MCP server, started on first use (web/mcp_endpoint.py)

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

    def reading(self):
        """A read connection for the duration of a with block (see ReaderPool.reading)."""
        return self.pool.reading()


def services() -> Services:
    """The Services of the current app."""
    return current_app.extensions["ragserver"]
