"""The chat page and the JSON/SSE ask API: thin views over answer.answer()."""

from __future__ import annotations

import json
import re
import secrets
import time

from flask import Blueprint, abort, jsonify, redirect, render_template, request, url_for
from markupsafe import Markup, escape
from werkzeug.exceptions import HTTPException

from ..answer import Event, Options, answer
from ..storage import BackendUnavailable, database_errors
from ..embedder import EmbedderError
from ..llm import LLMError
from ..render import checked_answer
from .conversations import Turn
from .limits import check_rate, take_place
from .services import services
from .sse import event_stream, sse
from .validation import MAX_QUESTION_CHARS, BadQuestion, check_question

bp = Blueprint("chat", __name__)

ABANDONED_SECONDS = 60  # a turn whose stream was not opened by then gives up its place
EXAMPLES = 4  # example questions on an empty conversation
TIMINGS = ("retrieval_ms", "ttft_ms", "tokens", "tokens_per_s")  # shown under an answer


def answer_events(question: str, history: list[dict], stop=None, **options):
    """answer() with the app's models, readers and settings (`options` override Options)."""
    svc = services()
    settings = svc.settings
    try:
        if not svc.pool.has_database():
            yield Event("error", {"message": "No posts have been ingested yet: run "
                                             "`ragserver ingest SOURCE...` first."})
            return
        embedder = svc.embedder()
        model = svc.llm()
        yield from answer(question, history, db=svc.reading, embedder=embedder, model=model,
                          gate=svc.gate, options=Options.from_settings(settings, **options),
                          should_stop=stop.is_set if stop else (lambda: False))
    except (HTTPException, *database_errors(), BackendUnavailable, EmbedderError,
            LLMError) as error:
        # A missing model, an unreadable database, no connection free: say so in the
        # answer, not as a broken stream. (Generation errors arrive as events already.)
        message = error.description if isinstance(error, HTTPException) else str(error)
        yield Event("error", {"message": message})


# -- the page ---------------------------------------------------------------

@bp.get("/")
def index():
    """The chat page; ?c= continues a conversation, ?q= fills in a question to ask."""
    cid = request.args.get("c") or secrets.token_urlsafe(9)
    turns = services().conversations.turns(cid)
    draft = (request.args.get("q") or "")[:MAX_QUESTION_CHARS]
    examples = [] if turns else _example_questions(EXAMPLES)
    return render_template("chat/index.html", cid=cid, turns=turns, draft=draft,
                           examples=examples, render=_render_turn_answer)


def example_question(title: str) -> str:
    """A post title as a question: "How to X" -> "How do I X?", other titles asked about."""
    title = " ".join(title.split())
    if title.endswith("?"):
        return title
    how_to = re.match(r"how to\s+(.+?)[.!]*$", title, re.IGNORECASE)
    if how_to:
        return f"How do I {how_to.group(1)}?"
    return f"What does the blog say about “{title}”?"


def _example_questions(n: int) -> list[str]:
    """Questions from the n most recent posts; none when the database is missing, empty or busy."""
    svc = services()
    try:
        if not svc.pool.has_database():
            return []
        with svc.reading() as conn:
            posts = conn.example_posts(n)
    except (HTTPException, *database_errors(), BackendUnavailable):
        # Examples are a nicety: a busy, damaged or not yet ingested database must not
        # keep anyone from the page (asking says what is wrong).
        return []
    return [example_question(post.title) for post in posts]


def _render_turn_answer(turn: Turn):
    """The finished answer (page and SSE swap alike): checked text, copy button, timings."""
    # Markup: render_template gives a str, which {{ render(turn) }} would escape.
    html = checked_answer(turn.answer, turn.segments, len(turn.sources), turn.id,
                          answered=turn.answered)
    return Markup(render_template("chat/_answer.html", turn=turn, html=html))


@bp.post("/chat")
def ask_form():
    """A question from the form: with htmx, a turn that streams; without, the whole answer."""
    cid = request.form.get("c") or secrets.token_urlsafe(9)
    try:
        question = check_question(request.form.get("question"))
    except BadQuestion as error:
        if request.htmx:
            return render_template("chat/_error.html", message=str(error)), 400
        return render_template("chat/index.html", cid=cid, error=str(error),
                               turns=services().conversations.turns(cid),
                               render=_render_turn_answer), 400
    svc = services()
    check_rate(svc.ask_limit, "questions")
    # A page that posted a question but never opened its stream must not hold a place.
    for abandoned in svc.conversations.unstarted(seconds=ABANDONED_SECONDS):
        abandoned.place.give_back()
    place = take_place(svc.gate)
    turn = svc.conversations.add(cid, question)
    turn.place = place
    if request.htmx:
        return render_template("chat/_turn.html", turn=turn, streaming=True,
                               render=_render_turn_answer)
    # Without JavaScript: answer in full, then show the conversation.
    svc.conversations.claim(turn)
    for _ in _run_turn(cid, turn):
        pass
    return redirect(url_for("chat.index", c=cid, _anchor=f"turn-{turn.id}"), code=303)


def _run_turn(cid: str, turn: Turn):
    """Run a claimed turn's answer, keeping the turn up to date; yields the events."""
    history = services().conversations.history(cid, turn)
    try:
        for event in answer_events(turn.question, history, turn.stop):
            if event.kind == "sources":
                turn.sources = event.data
            elif event.kind == "quick":
                turn.quick = event.data
            elif event.kind == "token":
                turn.answer += event.data
            elif event.kind == "checked":
                turn.answer, turn.segments = event.data["text"], event.data["segments"]
            elif event.kind == "error":
                turn.state, turn.error = "error", event.data["message"]
            elif event.kind == "done":
                turn.state = "stopped" if event.data["stopped"] else "done"
                turn.answered = event.data["answered"]
                turn.timings = {key: event.data.get(key) for key in TIMINGS}
                turn.timings["quick_ms"] = turn.quick.get("ms") if turn.quick else None
            yield event
    finally:
        if turn.state == "pending":  # the client went away mid-answer
            turn.state = "stopped"
        if turn.place:
            turn.place.give_back()


@bp.get("/chat/stream/<turn_id>")
def stream_turn(turn_id: str):
    """Server-sent events that fill in one turn: status, tokens, answer, sources, end."""
    found = services().conversations.find(turn_id)
    if found is None:
        abort(404)
    cid, turn = found

    def finished():
        yield sse("answer", str(_render_turn_answer(turn)))
        yield sse("sources", render_template("chat/_sources.html", turn=turn))
        yield sse("end", "")

    if turn.state != "pending":  # a reconnect after the answer finished: the result
        return event_stream(finished())
    if not services().conversations.claim(turn):
        # Another stream is answering (a reconnect before the server noticed the first
        # connection drop, or a second window): wait for it rather than answer twice.
        def after_the_other():
            while turn.state == "pending":
                yield sse("status", "Answering…")  # a write each second: notices a client that left
                time.sleep(1)
            yield from finished()
        return event_stream(after_the_other())

    def generate():
        for event in _run_turn(cid, turn):
            if event.kind == "queued":
                yield sse("status", f"Waiting for the model: {event.data['position']} "
                                    "question(s) ahead…")
            elif event.kind == "sources":
                yield sse("status", "Answering…")
            elif event.kind == "quick":
                yield sse("quick", render_template("chat/_quick.html", turn=turn))
            elif event.kind == "token":
                yield sse("token", str(escape(event.data)))
            elif event.kind == "error":
                yield sse("status", str(render_template("chat/_error.html",
                                                   message=event.data["message"])))
            elif event.kind == "done":
                yield sse("status", "Stopped." if event.data["stopped"] else "")
        yield sse("answer", str(_render_turn_answer(turn)))
        yield sse("sources", render_template("chat/_sources.html", turn=turn))
        yield sse("end", "")

    return event_stream(generate())


@bp.post("/chat/stop/<turn_id>")
def stop_turn(turn_id: str):
    """Stop a turn's generation (the Stop button)."""
    found = services().conversations.find(turn_id)
    if found is None:
        abort(404)
    found[1].stop.set()
    return "", 204


# -- JSON API ---------------------------------------------------------------

@bp.post("/api/ask")
def api_ask():
    """{"question": ..., "history": [{"role": ..., "content": ...}]} -> text/event-stream."""
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict):
        return jsonify(error="send a JSON object: {\"question\": ..., \"history\": [...]}"), 400
    try:
        question = check_question(payload.get("question"))
    except BadQuestion as error:
        return jsonify(error=str(error)), 400
    history = payload.get("history") or []
    if not isinstance(history, list):
        return jsonify(error="history must be a list of {role, content} objects"), 400
    svc = services()
    check_rate(svc.ask_limit, "questions")
    place = take_place(svc.gate)

    def generate():
        try:
            for event in answer_events(question, history):
                data = {"text": event.data} if event.kind == "token" else event.data
                if event.kind == "sources":
                    data = {"sources": event.data}
                yield sse(event.kind, json.dumps(data, ensure_ascii=False))
        finally:
            place.give_back()

    response = event_stream(generate())
    response.call_on_close(place.give_back)  # also when the stream never started
    return response
