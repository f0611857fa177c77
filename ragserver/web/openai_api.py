"""OpenAI's chat completions API over the blog: any OpenAI client can use it as a model.

A thin view over the same answers as the chat and /api/ask (answer_events): the last user
message is the question, earlier user and assistant messages the conversation. The answer's
text ends with the numbered sources, so that plain clients show them; `sources` and
`answered` beside the choices say the same to clients that look.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import dataclass

from flask import Blueprint, jsonify, request, url_for

from ..answer import NO_ANSWER
from .chat import _run_turn, start_turn
from .errors import openai_error, openai_error_object
from .limits import check_rate, take_place
from .services import services
from .sse import event_stream
from .validation import BadQuestion, check_question

bp = Blueprint("openai_api", __name__)

MODEL_ID = "ragserver"
STARTED = int(time.time())  # the model's `created`: when this server started
SOURCES_HEADING = "\n\nSources:\n"
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
CHARS_PER_TOKEN = 4  # usage counts what the model did not count itself: an estimate


class BadRequest(ValueError):
    """A request this API cannot take; the message says why, `param` names the field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Completion:
    """What a chat completions request asks, checked."""

    question: str
    history: list[dict]
    stream: bool
    include_usage: bool
    max_tokens: int
    prompt_chars: int


def _model_entry() -> dict:
    return {"id": MODEL_ID, "object": "model", "created": STARTED, "owned_by": "ragserver"}


def _unknown_model(model: str):
    message = f"The model {model!r} does not exist: this server has one, {MODEL_ID!r}."
    return openai_error(message, 404, code="model_not_found", param="model"), 404


@bp.get("/v1/models")
def list_models():
    """The one model: the blog."""
    return jsonify(object="list", data=[_model_entry()])


@bp.get("/v1/models/<path:model>")
def get_model(model: str):
    """The model, or 404 in OpenAI's error shape."""
    return jsonify(_model_entry()) if model == MODEL_ID else _unknown_model(model)


# -- reading a request ---------------------------------------------------------

def text_of(content, where: str) -> str:
    """A message's content as text: a string, or the text parts of a list (no images)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or a list of text parts", "messages")
    texts = []
    for part in content:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise BadRequest(f"{where}.content parts must be objects like "
                             '{"type": "text", "text": "..."}', "messages")
        if part["type"] != "text":
            raise BadRequest(f"{where}.content has a {part['type']!r} part: this model reads "
                             "text only", "messages")
        if not isinstance(part.get("text"), str):
            raise BadRequest(f"{where}.content has a text part without text", "messages")
        texts.append(part["text"])
    return "\n".join(texts)


def without_sources(text: str) -> str:
    """An earlier answer of this API without the sources list it ended with."""
    head, heading, tail = text.rpartition(SOURCES_HEADING)
    if heading and all(line.startswith("[") for line in tail.strip().splitlines()):
        return head
    return text


def _whole_number(payload: dict, name: str) -> int | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"{name} must be a whole number of at least 1", name)
    return value


def _number(payload: dict, name: str, high: float) -> None:
    value = payload.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:
        raise BadRequest(f"{name} must be a number from 0 to {high:g}", name)


def read_completion(payload: dict, max_answer_tokens: int) -> Completion:
    """The request's question, history and options, or BadRequest."""
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list of {role, content} objects",
                         "messages")
    turns = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where} must be an object with role and content", "messages")
        role = message.get("role")
        if role not in ROLES:
            raise BadRequest(f"{where}.role must be one of {', '.join(ROLES)}", "messages")
        turns.append((role, text_of(message.get("content"), where), where))
    asked = [i for i, (role, _, _) in enumerate(turns) if role == "user"]
    if not asked:
        raise BadRequest("messages must hold a user message: the last one is the question",
                         "messages")
    _, text, where = turns[asked[-1]]
    try:
        question = check_question(text)
    except BadQuestion as error:
        raise BadRequest(f"{where}: {error}", "messages") from None
    # System and developer messages are not passed on: the blog's own instructions hold.
    history = [{"role": role, "content": without_sources(text) if role == "assistant" else text}
               for role, text, _ in turns[:asked[-1]] if role in ("user", "assistant")]
    stream = payload.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("stream must be true or false", "stream")
    options = payload.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("stream_options must be an object", "stream_options")
    if payload.get("n") not in (None, 1):
        raise BadRequest("n must be 1: this server gives one answer per question", "n")
    asked_tokens = _whole_number(payload, "max_completion_tokens") or \
        _whole_number(payload, "max_tokens")
    _number(payload, "temperature", 2)  # accepted, not used: answers are greedy (llm.SAMPLING)
    _number(payload, "top_p", 1)
    return Completion(
        question=question, history=history, stream=bool(stream),
        include_usage=options.get("include_usage") is True,
        max_tokens=min(asked_tokens or max_answer_tokens, max_answer_tokens),
        prompt_chars=len(question) + sum(len(turn["content"]) for turn in history))


# -- answering -----------------------------------------------------------------

def sources_list(sources: list[dict]) -> str:
    """The sources as the answer's last lines: "[n] title — link"."""
    lines = [f"[{s['n']}] {s['title']}" + (f" — {s['link']}" if s["link"] else "")
             for s in sources]
    return SOURCES_HEADING + "\n".join(lines) if lines else ""


class Answer:
    """One answer, gathered from its events: the text streamed so far and what it ends with."""

    def __init__(self):
        self.sources: list[dict] = []
        self.streamed = ""  # the model's tokens (or the refusal), as they came
        self.checked: str | None = None  # the text after the grounding checks
        self.quick: dict | None = None
        self.done: dict | None = None
        self.error: str | None = None

    def take(self, event) -> str:
        """Note one event; the text a stream should send for it now."""
        if event.kind == "sources":
            self.sources = event.data
        elif event.kind == "quick":
            self.quick = event.data
        elif event.kind == "token":
            self.streamed += event.data
            return event.data
        elif event.kind == "checked":
            self.checked = event.data["text"]
        elif event.kind == "done":
            self.done = event.data
        elif event.kind == "error":
            self.error = event.data["message"]
        return ""

    @property
    def answered(self) -> bool:
        return bool(self.done and self.done.get("answered"))

    @property
    def text(self) -> str:
        """The answer: the checked text, else what streamed, else (with no answer model)
        the quoted sentences, else the chat's refusal."""
        if self.checked is not None:
            return self.checked
        if self.streamed:
            return self.streamed
        if self.quick and self.answered:
            return f"{self.quick['text']} [{self.quick['n']}]"
        return NO_ANSWER

    @property
    def content(self) -> str:
        """The text with the sources listed after it (none for an unanswered question)."""
        return self.text + (sources_list(self.sources) if self.answered else "")

    def tail(self) -> str:
        """What a stream sends after the tokens: the sources list, and before it the text
        when no token streamed (the quoted answer without a model). The streamed tokens
        stay as the model wrote them: a stream cannot take back what the checks change."""
        return self.content[len(self.text):] if self.streamed else self.content

    def sources_field(self) -> list[dict]:
        return [{key: s[key] for key in ("n", "title", "url", "link")} for s in self.sources] \
            if self.answered else []

    def finish_reason(self, max_tokens: int) -> str:
        return "length" if self.done and self.done.get("tokens", 0) >= max_tokens else "stop"

    def usage(self, completion: Completion) -> dict:
        """Token counts: the model's own for the answer, estimated from characters for the
        messages (the prompt with its passages is the model's business) and quotes."""
        prompt = math.ceil(completion.prompt_chars / CHARS_PER_TOKEN)
        answer = (self.done or {}).get("tokens") or math.ceil(len(self.text) / CHARS_PER_TOKEN)
        return {"prompt_tokens": prompt, "completion_tokens": answer,
                "total_tokens": prompt + answer}


def _data(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


@bp.post("/v1/chat/completions")
def chat_completions():
    """OpenAI's POST /v1/chat/completions: a chat.completion, or chat.completion.chunk events."""
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict):
        return openai_error('Send a JSON object: {"model": "ragserver", "messages": [...]}.',
                            400), 400
    model = payload.get("model", MODEL_ID)
    if model != MODEL_ID:
        if not isinstance(model, str):
            return openai_error("model must be a string", 400, param="model"), 400
        return _unknown_model(model)
    svc = services()
    try:
        completion = read_completion(payload, svc.settings.max_answer_tokens)
    except BadRequest as error:
        return openai_error(str(error), 400, param=error.param), 400
    check_rate(svc.ask_limit, "questions")
    place = take_place(svc.gate)
    reply = {"id": f"chatcmpl-{secrets.token_hex(12)}", "created": int(time.time()),
             "model": MODEL_ID}
    # Kept in the activity store as any answer is (via "openai"), with a permalink.
    turn = start_turn(completion.question, "openai")
    permalink = url_for("chat.permalink", turn_id=turn.id, _external=True)
    events = _run_turn(turn.conversation, turn, completion.history,
                       max_answer_tokens=completion.max_tokens)
    if not completion.stream:
        answer = Answer()
        try:
            for event in events:
                answer.take(event)
        finally:
            place.give_back()
        if answer.error:
            return openai_error(answer.error, 503), 503, {"Retry-After": "30"}
        return jsonify(
            **reply, object="chat.completion",
            choices=[{"index": 0, "message": {"role": "assistant", "content": answer.content},
                      "finish_reason": answer.finish_reason(completion.max_tokens),
                      "logprobs": None}],
            usage=answer.usage(completion), sources=answer.sources_field(),
            answered=answer.answered, permalink=permalink)

    def chunk(delta: dict, finish_reason=None, **extra) -> str:
        return _data({**reply, "object": "chat.completion.chunk",
                      "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                                   "logprobs": None}], **extra})

    def generate():
        answer = Answer()
        try:
            yield chunk({"role": "assistant", "content": ""})
            for event in events:
                piece = answer.take(event)
                if piece:
                    yield chunk({"content": piece})
                elif event.kind == "queued":
                    # An SSE comment: clients skip it, and writing notices one that left.
                    yield f": waiting for the model, {event.data['position']} ahead\n\n"
            if answer.error:
                # The status (200) is sent already: OpenAI's error object as an event (the
                # openai package raises APIError with its message), then the end.
                yield _data({"error": openai_error_object(answer.error, 503)})
            else:
                rest = answer.tail()
                if rest:
                    yield chunk({"content": rest})
                yield chunk({}, answer.finish_reason(completion.max_tokens),
                            sources=answer.sources_field(), answered=answer.answered,
                            permalink=permalink)
                if completion.include_usage:
                    yield _data({**reply, "object": "chat.completion.chunk", "choices": [],
                                 "usage": answer.usage(completion)})
            yield "data: [DONE]\n\n"
        finally:
            events.close()
            place.give_back()

    response = event_stream(generate())
    response.call_on_close(place.give_back)  # also when the stream never started
    return response
