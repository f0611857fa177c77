"""Conversations: each question and its answer as a turn.

A turn being answered lives in the memory of the worker answering it (its stop button,
its place at the model, its stream); every turn is also written to the activity store
when it is asked and when its answer ends, so conversations and their permalinks outlive
a restart and every worker sees them. Without a store (RAGSERVER_ACTIVITY_DB=off, or one
that fails) conversations are kept in memory only, as far as they can be.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from ..activity import Activity, ActivityUnavailable, StoredTurn
from ..gate import Place

TIMINGS = ("retrieval_ms", "ttft_ms", "tokens", "tokens_per_s")  # shown under an answer


@dataclass
class Turn:
    """One question of a conversation and what has become of its answer so far."""

    id: str
    question: str
    conversation: str = ""
    answer: str = ""
    sources: list = field(default_factory=list)
    quick: dict | None = None  # the quoted quick answer, when the posts had one
    segments: list = field(default_factory=list)  # the checked answer, sentence by sentence
    answered: bool = True  # False when the posts did not cover the question
    similarity: float | None = None  # of the closest passage to the question
    timings: dict = field(default_factory=dict)  # from the done event, shown on request
    state: str = "pending"  # pending, done, stopped, error; interrupted when read back unfinished
    error: str = ""
    stop: threading.Event = field(default_factory=threading.Event)
    place: Place | None = None  # at the model, from the form post until the answer ends
    started: bool = False  # claimed by its stream (or the no-JavaScript answer)
    vector: tuple[bytes, str] | None = None  # the question's vector and model, for the report

    @classmethod
    def from_stored(cls, stored: StoredTurn) -> "Turn":
        """A turn read back from the store; one still pending there was cut off (its worker
        stopped or died) or is being answered by another worker."""
        state = "interrupted" if stored.state == "pending" else stored.state
        return cls(id=stored.id, question=stored.question, conversation=stored.conversation,
                   answer=stored.answer, sources=stored.sources, quick=stored.quick,
                   segments=stored.segments,
                   answered=True if stored.answered is None else stored.answered,
                   similarity=stored.similarity, timings=stored.timings, state=state,
                   error=stored.error, started=True)

    def apply(self, event) -> None:
        """Keep what an answer event says (answer.answer()'s events, in order)."""
        if event.kind == "sources":
            self.sources = event.data
        elif event.kind == "quick":
            self.quick = event.data
        elif event.kind == "token":
            self.answer += event.data
        elif event.kind == "checked":
            self.answer, self.segments = event.data["text"], event.data["segments"]
        elif event.kind == "error":
            self.state, self.error = "error", event.data["message"]
        elif event.kind == "done":
            self.state = "stopped" if event.data["stopped"] else "done"
            self.answered = event.data["answered"]
            self.similarity = (event.data.get("relevance") or {}).get("similarity")
            self.timings = {key: event.data.get(key) for key in TIMINGS}
            self.timings["quick_ms"] = self.quick.get("ms") if self.quick else None


class Conversations:
    """Turns being answered here, in memory; every turn, in the activity store."""

    def __init__(self, store: Activity | None = None, limit: int = 1000):
        self.store = store
        self.limit = limit
        self._items: OrderedDict[str, list[Turn]] = OrderedDict()
        self._turns: dict[str, Turn] = {}
        self._lock = threading.Lock()

    def turns(self, cid: str) -> list[Turn]:
        """The turns of a conversation, oldest first ([] for an unknown id)."""
        with self._lock:
            here = list(self._items.get(cid, []))
        if self.store is None:
            return here
        try:
            stored = self.store.conversation(cid)
        except ActivityUnavailable:
            return here
        with self._lock:
            turns = [self._turns.get(s.id) or Turn.from_stored(s) for s in stored]
        known = {turn.id for turn in turns}
        return turns + [turn for turn in here if turn.id not in known]  # writes that failed

    def add(self, cid: str, question: str, via: str = "chat") -> Turn:
        """Start a new turn in the conversation (created if needed)."""
        turn = Turn(id=secrets.token_urlsafe(12), question=question, conversation=cid)
        with self._lock:
            self._items.setdefault(cid, []).append(turn)
            self._items.move_to_end(cid)
            self._turns[turn.id] = turn
            while len(self._items) > self.limit:
                _, dropped = self._items.popitem(last=False)
                for old in dropped:
                    self._turns.pop(old.id, None)
        if self.store is not None:
            self.store.start_turn(turn.id, cid, question, via)
        return turn

    def finish(self, turn: Turn) -> None:
        """The turn's answer ended: keep it in the store."""
        if turn.state == "pending":  # the client went away mid-answer
            turn.state = "stopped"
        if self.store is not None:
            self.store.finish_turn(turn.id, answer=turn.answer, state=turn.state,
                                   answered=turn.answered, similarity=turn.similarity,
                                   sources=turn.sources, quick=turn.quick,
                                   segments=turn.segments, timings=turn.timings,
                                   error=turn.error, vector=turn.vector)

    def find(self, turn_id: str) -> Turn | None:
        """A turn by id: the live one if this worker has it, else as stored."""
        with self._lock:
            turn = self._turns.get(turn_id)
        if turn is not None or self.store is None:
            return turn
        try:
            stored = self.store.turn(turn_id)
        except ActivityUnavailable:
            return None
        return Turn.from_stored(stored) if stored else None

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
            return [turn for turn in self._turns.values()
                    if turn.place and turn.place.taken and not turn.started
                    and now - turn.place.since > seconds]

    def history(self, cid: str, before: Turn) -> list[dict]:
        """Earlier finished turns as chat messages, for follow-up questions."""
        messages = []
        for turn in self.turns(cid):
            if turn.id == before.id:
                break
            if turn.answer and turn.state in ("done", "stopped"):
                messages += [{"role": "user", "content": turn.question},
                             {"role": "assistant", "content": turn.answer}]
        return messages
