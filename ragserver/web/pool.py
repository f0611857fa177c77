"""A few read-only storages (readers), lent to one request at a time."""

from __future__ import annotations

import queue
import threading
from contextlib import contextmanager

from werkzeug.exceptions import ServiceUnavailable

from ..storage import NotADatabase, Storage, database_errors, exists, open_storage

# Read connections open at once: searches are CPU-bound (two cores here), so more would
# only queue elsewhere, and each sqlite-vss connection holds its own copy of the index.
READERS = 2
READER_WAIT = 30  # seconds a request waits for a connection before a 503


class ReaderPool:
    """Up to READERS readers of the database, opened when first needed and reused."""

    def __init__(self, database: str):
        self.database = database
        self._idle: queue.LifoQueue[Storage] = queue.LifoQueue()
        self._lendable = threading.BoundedSemaphore(READERS)
        self._found = False

    def has_database(self) -> bool:
        """False while there is no ragserver database to read yet: no SQLite file, or a
        PostgreSQL database nothing was ingested into. Once found, it is not asked again."""
        if self._found:
            return True
        if not exists(self.database):
            return False
        try:
            with self.reading():
                pass
        except NotADatabase:
            return False
        self._found = True
        return True

    @contextmanager
    def reading(self):
        """Lend one of READERS read-only storages for the duration of the block.

        Read-only: nothing a web request does can change the posts (the CLI writes).
        Shared, not one per thread: each sqlite-vss connection loads the whole index
        into memory (about 300 MB at 200k passages). A connection is reopened when the
        vector index changed since it was last lent (see Storage.refresh).
        """
        if not self._lendable.acquire(timeout=READER_WAIT):
            raise ServiceUnavailable("The server is too busy to search right now; "
                                     "please try again shortly.", retry_after=5)
        reader = None
        try:
            try:
                reader = self._idle.get_nowait()
            except queue.Empty:
                reader = open_storage(self.database, readonly=True)
            reader.refresh()
            yield reader
        except database_errors():
            if reader is not None:  # a database replaced or damaged under it: open afresh
                reader.close()
                reader = None
            raise
        finally:
            if reader is not None:
                self._idle.put(reader)
            self._lendable.release()
