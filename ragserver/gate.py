"""The model gate: one generation at a time, first come first served, with a bounded queue.

One `llama_cpp.Llama` is not thread-safe, and one model process answers one prompt at a
time, so every answer waits here for its turn at the model, whichever backend runs it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Iterator


class QueueFull(RuntimeError):
    """Too many questions are already waiting for the model."""


class Gate:
    """One generation at a time, first come first served; knows who waits and how long
    answers take."""

    def __init__(self, max_waiting: int | None = None):
        self._cond = threading.Condition()
        self._holder = False
        self._queue: deque[object] = deque()  # waiting questions, oldest first
        self.max_waiting = max_waiting
        self.admitted = 0  # questions holding a Place: answering, waiting, or about to
        self.typical_seconds = 10.0  # moving average of how long the model is held
        self._held_since = 0.0

    @property
    def busy(self) -> bool:
        """True while a generation holds the model."""
        return self._holder

    @property
    def waiting(self) -> int:
        """Questions waiting for the model."""
        return len(self._queue)

    def admit(self) -> "Place | None":
        """A place for one more question (the model's or one of `max_waiting` behind it),
        or None when all are taken. Taking places when requests arrive, before they
        stream, is what keeps a burst from overfilling the queue."""
        with self._cond:
            if self.max_waiting is not None and self.admitted >= 1 + self.max_waiting:
                return None
            self.admitted += 1
        return Place(self)

    def _leave(self) -> None:
        with self._cond:
            self.admitted -= 1

    def expected_wait(self) -> float:
        """Seconds a new question would likely wait for the model."""
        return self.typical_seconds * max(self.admitted, self.waiting + self.busy)

    def _take(self) -> None:
        self._holder = True
        self._held_since = time.monotonic()

    def wait(self, timeout: float, poll: float = 1.0) -> Iterator[int]:
        """Yield this question's place in the queue (1: next) about every `poll` seconds
        until the model is free and it is first in line.

        When the loop ends, the caller holds the model and must call release().
        Raises QueueFull at once when `max_waiting` others wait already, and
        TimeoutError after `timeout` seconds. A caller that stops iterating (a
        client that went away) leaves the queue without ever holding the model.
        """
        me = object()
        with self._cond:
            if not self._holder and not self._queue:
                self._take()
                return
            if self.max_waiting is not None and len(self._queue) >= self.max_waiting:
                raise QueueFull(f"the model is busy and {len(self._queue)} question(s) are "
                                f"waiting already; try again in {round(self.expected_wait())} seconds")
            self._queue.append(me)
        deadline = time.monotonic() + timeout
        try:
            while True:
                with self._cond:
                    position = self._queue.index(me) + 1
                yield position
                with self._cond:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("the model is busy answering others; try again shortly")
                    if self._cond.wait_for(lambda: not self._holder and self._queue[0] is me,
                                           timeout=min(poll, left)):
                        self._queue.popleft()
                        self._take()
                        return
        finally:
            with self._cond:
                if me in self._queue:  # gave up (timeout, or the client left): next in line
                    self._queue.remove(me)
                    self._cond.notify_all()

    def release(self) -> None:
        """Free the model for the next question in line."""
        with self._cond:
            held = time.monotonic() - self._held_since
            self.typical_seconds = 0.7 * self.typical_seconds + 0.3 * held
            self._holder = False
            self._cond.notify_all()


class Place:
    """An admitted question's place at the Gate; given back once, whichever path ends it."""

    def __init__(self, gate: Gate):
        self._gate = gate
        self._lock = threading.Lock()
        self.taken = True
        self.since = time.monotonic()

    def give_back(self) -> None:
        """Free the place (again: no effect)."""
        with self._lock:
            if not self.taken:
                return
            self.taken = False
        self._gate._leave()
