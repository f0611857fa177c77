"""Conversations: each question and its answer as a turn, in this process's memory."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from ..gate import Place


@dataclass
class Turn:
    """One question of a conversation and what has become of its answer so far."""

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
