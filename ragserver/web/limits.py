"""Per-client rate limits: a token bucket per client address, in this process's memory or,
with PostgreSQL, in the database, shared by every worker and machine."""

from __future__ import annotations

import logging
import math
import threading
import time

from flask import request
from werkzeug.exceptions import TooManyRequests


def spend(tokens: float, elapsed: float, per_minute: int) -> tuple[float, float]:
    """One request against a bucket that held `tokens` `elapsed` seconds ago and refills at
    `per_minute` a minute, up to `per_minute`: (tokens left, 0) when it may go ahead, else
    (tokens, seconds until it may). The arithmetic of every bucket, in memory or shared."""
    rate = per_minute / 60.0
    tokens = min(float(per_minute), tokens + max(0.0, elapsed) * rate)
    if tokens >= 1.0:
        return tokens - 1.0, 0.0
    return tokens, (1.0 - tokens) / rate


class RateLimit:
    """`per_minute` requests a minute per key, in bursts of up to `per_minute`.

    Buckets of clients idle for a minute are full again and are dropped, so memory
    stays bounded by the clients of the last minute.
    """

    def __init__(self, per_minute: int, clock=time.monotonic, *, shared=None, name: str = ""):
        self.per_minute = per_minute
        self.shared = shared  # storage's shared buckets (see storage.shared_rate_limits), or None
        self.name = name
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated)
        self._lock = threading.Lock()
        self._swept = clock()

    def take(self, key: str) -> float:
        """0 when `key` may go ahead (and it is counted), else seconds until it may."""
        if self.per_minute <= 0:
            return 0.0
        if self.shared is not None:
            try:
                return self.shared.take(self.name, key, self.per_minute, spend)
            except Exception as error:  # the database is down: count here, in this worker
                logging.getLogger("ragserver.web").warning(
                    "shared rate limits unavailable (%s); counting in this worker", error)
        with self._lock:
            now = self._clock()
            self._sweep(now)
            tokens, updated = self._buckets.get(key, (float(self.per_minute), now))
            tokens, wait = spend(tokens, now - updated, self.per_minute)
            self._buckets[key] = (tokens, now)
            return wait

    def _sweep(self, now: float) -> None:
        if now - self._swept < 60:
            return
        self._swept = now
        for key in [k for k, (_, updated) in self._buckets.items() if now - updated >= 60]:
            del self._buckets[key]


def retry_after(seconds: float) -> int:
    """A Retry-After value: whole seconds, at least 1."""
    return max(1, math.ceil(seconds))


def check_rate(limit: RateLimit, noun: str, client: str | None = None) -> None:
    """Count one request of this client (the request's address unless `client` names it);
    HTTP 429 with Retry-After when it is over the limit."""
    if client is None:
        client = request.remote_addr or ""
    wait = limit.take(client)
    if wait:
        seconds = retry_after(wait)
        raise TooManyRequests(f"Too many {noun} from your address: please wait {seconds} "
                              "seconds and try again.", retry_after=seconds)


def take_place(gate):
    """A Place for one question at the model, or HTTP 429 with Retry-After when the
    model's queue is full. The caller gives the place back when the answer ends."""
    place = gate.admit()
    if place is None:
        seconds = retry_after(gate.expected_wait())
        raise TooManyRequests(f"The model is busy: {gate.admitted - 1} question(s) are waiting "
                              f"already. Please try again in {seconds} seconds.",
                              retry_after=seconds)
    return place
