"""The chat page and the JSON/SSE ask API: thin views over answer.answer()."""

from __future__ import annotations

import json
import re
import secrets
import time

from flask import (Blueprint, abort, jsonify, make_response, redirect, render_template, request,
                   url_for)
from markupsafe import Markup, escape
from werkzeug.exceptions import HTTPException

from ..activity import MAX_COMMENT_CHARS
from ..answer import Event, Options, answer
from ..storage import BackendUnavailable, database_errors
from ..embedder import EmbedderError
from ..llm import LLMError
from ..render import checked_answer
from .conversations import Turn
from .limits import check_rate, retry_after, take_place
from .services import services
from .sse import event_stream, sse
from .validation import MAX_QUESTION_CHARS, BadQuestion, check_question

bp = Blueprint("chat", __name__)

ABANDONED_SECONDS = 60  # a turn whose stream was not opened by then gives up its place
EXAMPLES = 4  # example questions on an empty conversation


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


def _render_turn_answer(turn: Turn, **feedback):
    """The finished answer (page and SSE swap alike): checked text, copy button, timings,
    permalink and the feedback form (`feedback`: its thanks, error and comment)."""
    # Markup: render_template gives a str, which {{ render(turn) }} would escape.
    html = checked_answer(turn.answer, turn.segments, len(turn.sources), turn.id,
                          answered=turn.answered)
    return Markup(render_template("chat/_answer.html", turn=turn, html=html, **feedback))


def _answer_page(turn: Turn, **feedback):
    """The permalink page of one answer."""
    response = make_response(render_template(
        "chat/answer.html", turn=turn, render=lambda t: _render_turn_answer(t, **feedback)))
    response.headers["X-Robots-Tag"] = "noindex"
    return response


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


def _run_turn(cid: str, turn: Turn, history: list[dict] | None = None, **options):
    """Run a claimed turn's answer, keeping the turn up to date; yields the events. The
    turn is written to the activity store when it ends, however it ends. `history`: the
    earlier messages a client sent (the APIs), else the conversation's own; `options`
    override the answer's settings (see answer_events)."""
    conversations = services().conversations
    if history is None:
        history = conversations.history(cid, turn)
    try:
        for event in answer_events(turn.question, history, turn.stop, **options):
            turn.apply(event)
            yield event
    finally:
        if turn.place:
            turn.place.give_back()
        if turn.timings.get("retrieval_ms") is not None:  # retrieval ran: the model is loaded
            turn.vector = _question_vector(turn.question)
        conversations.finish(turn)


def _question_vector(question: str) -> tuple[bytes, str] | None:
    """The question's vector as the owner's report uses it, kept with the turn so that the
    report need not embed it again. Retrieval embedded the question itself first, and the
    web embedder caches query vectors: this is a lookup, not a second embedding."""
    try:
        embedder = services().embedder()
        return embedder.embed_query(question).astype("float32").tobytes(), embedder.info.name
    except Exception:  # no vector: the report embeds the question when it runs
        return None


@bp.get("/chat/stream/<turn_id>")
def stream_turn(turn_id: str):
    """Server-sent events that fill in one turn: status, tokens, answer, sources, end."""
    turn = services().conversations.find(turn_id)
    if turn is None:
        abort(404)
    cid = turn.conversation

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
    turn = services().conversations.find(turn_id)
    if turn is None:
        abort(404)
    turn.stop.set()
    return "", 204


# -- permalinks and feedback -----------------------------------------------------

@bp.get("/a/<turn_id>")
def permalink(turn_id: str):
    """One answer on a page of its own: the question, the answer and its sources. Its id is
    random (96 bits), so only those it is shared with find it; it names no conversation."""
    turn = services().conversations.find(turn_id)
    if turn is None:
        abort(404)
    return _answer_page(turn, thanks=request.args.get("thanks") == "1")


VOTES = {"up": 1, "down": -1}


def record_feedback(turn: Turn | None, vote, comment) -> tuple[int, str]:
    """(HTTP status, what to tell the reader) for a reader's mark on an answer (`turn`,
    None when no answer has the id)."""
    svc = services()
    if vote not in VOTES:
        return 400, "Say whether the answer helped: vote up or down."
    comment = comment if isinstance(comment, str) else ""
    comment = comment.strip()
    if len(comment) > MAX_COMMENT_CHARS:
        return 400, f"The comment is {len(comment)} characters long; the limit is {MAX_COMMENT_CHARS}."
    wait = svc.feedback_limit.take(request.remote_addr or "")
    if wait:
        return 429, f"Too much feedback from your address: please wait {retry_after(wait)} seconds."
    if svc.activity is None:
        return 503, "This server does not keep feedback (RAGSERVER_ACTIVITY_DB is off)."
    if turn is None:
        return 404, "There is no such answer (it may have been deleted after its retention period)."
    if turn.state == "pending":
        return 409, "The answer is not finished yet."
    if not svc.activity.add_feedback(turn.id, VOTES[vote], comment):
        return 503, "Your feedback could not be saved just now; please try again in a minute."
    return 200, "Thank you: your feedback was recorded."


@bp.post("/a/<turn_id>/feedback")
def feedback(turn_id: str):
    """Thumbs up or down with an optional comment, from the form under an answer."""
    comment = request.form.get("comment") or ""
    turn = services().conversations.find(turn_id)
    status, message = record_feedback(turn, request.form.get("vote"), comment)
    if request.htmx:
        # htmx swaps only 2xx responses: a refusal comes back as the form with its message
        # and the reader's comment, so nothing typed is lost.
        if turn is None:
            return render_template("chat/_error.html", message=message)
        return render_template("chat/_feedback.html", turn=turn, thanks=status == 200,
                               error=None if status == 200 else message, comment=comment)
    if status == 200:
        return redirect(url_for("chat.permalink", turn_id=turn_id, thanks=1), code=303)
    if turn is None:
        abort(status, message)
    response = _answer_page(turn, error=message, comment=comment)
    response.status_code = status
    return response


@bp.post("/api/feedback")
def api_feedback():
    """{"id": answer id, "vote": "up"|"down", "comment": optional} -> {"ok": true}."""
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict) or not isinstance(payload.get("id"), str):
        return jsonify(error='send a JSON object: {"id": ..., "vote": "up" or "down", '
                             '"comment": ...}'), 400
    status, message = record_feedback(services().conversations.find(payload["id"]),
                                      payload.get("vote"), payload.get("comment") or "")
    if status != 200:
        return jsonify(error=message), status
    return jsonify(ok=True, message=message)


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
    turn = start_turn(question, "api")
    permalink = url_for("chat.permalink", turn_id=turn.id, _external=True)

    def generate():
        try:
            for event in _run_turn(turn.conversation, turn, history):
                data = {"text": event.data} if event.kind == "token" else event.data
                if event.kind == "sources":
                    data = {"sources": event.data}
                elif event.kind == "done":
                    data = {**event.data, "id": turn.id, "permalink": permalink}
                yield sse(event.kind, json.dumps(data, ensure_ascii=False))
        finally:
            place.give_back()

    response = event_stream(generate())
    response.call_on_close(place.give_back)  # also when the stream never started
    return response


def start_turn(question: str, via: str) -> Turn:
    """A one-off question of an API client (api, openai, mcp) as a turn of its own
    conversation, claimed: run it with _run_turn(turn.conversation, turn, history)."""
    conversations = services().conversations
    turn = conversations.add(secrets.token_urlsafe(9), question, via=via)
    conversations.claim(turn)
    return turn
