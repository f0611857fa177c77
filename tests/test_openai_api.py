"""The OpenAI-compatible API (/v1), driven by the real `openai` package: against gunicorn
from the Procfile over the seeded posts with SmolLM2, and against the app itself (through
httpx's WSGI transport) where a test needs a state no server is in."""

from __future__ import annotations

import urllib.request

import openai
import pytest

try:
    import httpx2 as httpx  # the HTTP client of openai 3
except ImportError:  # openai 1 and 2
    import httpx

from conftest import forget_rate_limits, running_server
from ragserver import create_app
from ragserver.answer import NO_ANSWER
from ragserver.web.openai_api import without_sources

WAL_QUESTION = "How do I enable WAL mode for a SQLite database?"
MAX_TOKENS = 48

# The Flask test client's app (edge cases no model is needed for): one place in the queue.
pytestmark = pytest.mark.app({"max_waiting": 1, "ask_rate": 0,
                              "allowed_origins": "https://blog.example"})


def client_of(base_url: str, **kwargs) -> openai.OpenAI:
    """The openai package as anyone would point it at this server: any key, no retries
    (a retried 429 would hide the refusal)."""
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="any key works", max_retries=0,
                         **kwargs)


@pytest.fixture(scope="module")
def server(seeded_db, tmp_path_factory):
    env = {"RAGSERVER_LLM_MODEL": "smollm2", "RAGSERVER_MAX_ANSWER_TOKENS": str(MAX_TOKENS)}
    log = tmp_path_factory.mktemp("gunicorn") / "server.log"
    with running_server(seeded_db, log, env) as url:
        yield client_of(url)


def sqlite_posts(sources: list[dict]) -> list[dict]:
    return [s for s in sources if "/sqlite/" in s["url"]]


def test_the_one_model_is_listed_and_found(server):
    models = server.models.list()
    assert [m.id for m in models] == ["ragserver"]
    assert models.data[0].owned_by == "ragserver" and models.data[0].created > 0
    assert server.models.retrieve("ragserver").id == "ragserver"
    with pytest.raises(openai.NotFoundError) as error:
        server.models.retrieve("gpt-4o")
    assert error.value.code == "model_not_found" and "'ragserver'" in error.value.message


def test_a_completion_answers_from_the_posts_and_lists_its_sources(server):
    completion = server.chat.completions.create(
        model="ragserver", max_tokens=1000, temperature=0.7,  # capped; accepted, not used
        messages=[{"role": "system", "content": "You are a pirate."},
                  {"role": "user", "content": WAL_QUESTION}])
    assert completion.object == "chat.completion" and completion.model == "ragserver"
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    extra = completion.model_extra
    assert extra["answered"] is True
    sources = extra["sources"]
    assert sqlite_posts(sources) and all(set(s) == {"n", "title", "url", "link"} for s in sources)
    answer, listed = choice.message.content.split("\n\nSources:\n")
    assert answer.strip()
    assert listed.splitlines() == [f"[{s['n']}] {s['title']} — {s['link']}" for s in sources]
    page = urllib.request.urlopen(extra["permalink"], timeout=30).read().decode()
    assert WAL_QUESTION in page and 'class="sources"' in page  # kept, via openai
    usage = completion.usage
    assert 0 < usage.completion_tokens <= MAX_TOKENS  # the server's cap, not the asked 1000
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_a_streamed_completion_ends_with_sources_and_usage(server):
    stream = server.chat.completions.create(
        model="ragserver", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": WAL_QUESTION}])
    chunks = list(stream)  # ends at data: [DONE]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    *answered, last, usage = chunks
    assert usage.choices == [] and usage.usage.completion_tokens > 0
    assert last.choices[0].finish_reason in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in answered)
    text = "".join(c.choices[0].delta.content or "" for c in answered)
    assert len([c for c in answered if c.choices[0].delta.content]) > 3  # token by token
    answer, listed = text.split("\n\nSources:\n")
    assert answer.strip()
    sources = last.model_extra["sources"]
    assert last.model_extra["answered"] is True and sqlite_posts(sources)
    assert listed.splitlines() == [f"[{s['n']}] {s['title']} — {s['link']}" for s in sources]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_question_the_posts_do_not_cover_gets_the_chats_refusal(server, stream):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    if stream:
        chunks = list(server.chat.completions.create(model="ragserver", messages=messages,
                                                     stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        extra = chunks[-1].model_extra
    else:
        completion = server.chat.completions.create(model="ragserver", messages=messages)
        text, extra = completion.choices[0].message.content, completion.model_extra
    assert text == NO_ANSWER
    assert extra["answered"] is False and extra["sources"] == []


def test_earlier_messages_are_the_conversation(server):
    follow_up = [{"type": "text", "text": "and how do I install it?"}]  # content as parts
    alone = server.chat.completions.create(
        model="ragserver", messages=[{"role": "user", "content": follow_up}])
    together = server.chat.completions.create(model="ragserver", max_tokens=8, messages=[
        {"role": "user", "content": "What is uv?"},
        {"role": "assistant", "content": "A Python package and project manager [1].\n\n"
                                         "Sources:\n[1] uv — https://til.example/uv/"},
        {"role": "user", "content": follow_up}])
    assert alone.model_extra["answered"] is False  # alone, "it" is nothing the posts know
    assert together.model_extra["answered"] is True and together.model_extra["sources"]
    assert all("/uv/" in s["url"] for s in together.model_extra["sources"])
    assert together.usage.completion_tokens <= 8  # max_tokens under the server's cap is honoured


LONG = "x" * 2001
BAD_REQUESTS = [
    ({"messages": []}, "messages must be a non-empty list"),
    ({"messages": [{"role": "system", "content": "Be brief."}]}, "must hold a user message"),
    ({"messages": [{"role": "user", "content": "   "}]}, "messages[0]: Please type a question."),
    ({"messages": [{"role": "user", "content": LONG}]}, "limited to 2,000 characters"),
    ({"messages": [{"role": "user", "content": "what\x00now"}]}, "control characters"),
    ({"messages": [{"role": "user", "content": 42}]}, "must be a string or a list of text parts"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://til.example/a.png"}}]}]},
     "this model reads text only"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role must be one of"),
    ({"messages": ["hi"]}, "messages[0] must be an object"),
    ({"messages": [{"role": "user", "content": "WAL?"}], "n": 2}, "n must be 1"),
    ({"messages": [{"role": "user", "content": "WAL?"}], "max_tokens": 0}, "max_tokens must be"),
    ({"messages": [{"role": "user", "content": "WAL?"}], "temperature": "hot"},
     "temperature must be a number"),
    ({"messages": [{"role": "user", "content": "WAL?"}], "stream": "yes"},
     "stream must be true or false"),
]


@pytest.mark.parametrize("body, words", BAD_REQUESTS, ids=[w for _, w in BAD_REQUESTS])
def test_bad_requests_raise_bad_request_error(server, body, words):
    with pytest.raises(openai.BadRequestError) as error:
        server.chat.completions.create(model="ragserver", **body)
    assert error.value.status_code == 400 and words in error.value.message
    assert error.value.type == "invalid_request_error"


def test_an_unknown_model_is_not_found(server):
    with pytest.raises(openai.NotFoundError) as error:
        server.chat.completions.create(model="gpt-4o-mini",
                                       messages=[{"role": "user", "content": WAL_QUESTION}])
    assert error.value.code == "model_not_found" and "gpt-4o-mini" in error.value.message


def test_questions_over_the_rate_raise_rate_limit_error(seeded_db, tmp_path_factory):
    """One question a minute, answered without a language model (quotes from the posts)."""
    forget_rate_limits(seeded_db)  # PostgreSQL's shared buckets remember earlier tests' questions
    env = {"RAGSERVER_ASK_RATE": "1", "RAGSERVER_LLM_MODEL": "none"}
    messages = [{"role": "user", "content": WAL_QUESTION}]
    log = tmp_path_factory.mktemp("gunicorn") / "server.log"
    with running_server(seeded_db, log, env) as url:
        client = client_of(url)
        quoted = client.chat.completions.create(model="ragserver", messages=messages)
        answer = quoted.choices[0].message.content
        sources = quoted.model_extra["sources"]
        assert quoted.model_extra["answered"] and sqlite_posts(sources)
        quote = answer.split("\n\nSources:\n")[0]
        assert quote.endswith("]") and quote != NO_ANSWER
        with pytest.raises(openai.RateLimitError) as error:
            client.chat.completions.create(model="ragserver", messages=messages)
    assert error.value.code == "rate_limit_exceeded" and "Too many questions" in error.value.message
    assert 1 <= int(error.value.response.headers["Retry-After"]) <= 60


def test_an_error_after_the_stream_began_ends_it_with_the_message(tmp_path):
    """No posts ingested: the answer fails after the stream's first chunk was sent."""
    app = create_app({"db": str(tmp_path / "nothing.db")})
    client = client_of("http://ragserver.test",
                       http_client=httpx.Client(transport=httpx.WSGITransport(app=app)))
    messages = [{"role": "user", "content": WAL_QUESTION}]
    received = []
    with pytest.raises(openai.APIError, match="No posts have been ingested yet") as error:
        for chunk in client.chat.completions.create(model="ragserver", messages=messages,
                                                    stream=True):
            received.append(chunk)
    assert [c.choices[0].delta.role for c in received] == ["assistant"]
    assert error.value.code == "service_unavailable"
    with pytest.raises(openai.InternalServerError, match="No posts have been ingested yet") as whole:
        client.chat.completions.create(model="ragserver", messages=messages)
    assert whole.value.status_code == 503
    assert app.extensions["ragserver"].gate.admitted == 0  # both gave their place back


# -- edge cases with the Flask test client ---------------------------------------

def test_errors_under_v1_have_openais_shape(client):
    cases = [
        (client.post("/v1/chat/completions", data="hello", content_type="text/plain"), 400,
         "Send a JSON object"),
        (client.post("/v1/chat/completions", json={"model": 7, "messages": []}), 400,
         "model must be a string"),
        (client.get("/v1/chat/completions"), 405, "GET is not allowed"),
        (client.get("/v1/engines"), 404, "There is nothing at /v1/engines"),
        (client.post("/v1/chat/completions", data=b"{" + b" " * 70_000 + b"}",
                     content_type="application/json"), 413, "too large"),
    ]
    for response, status, words in cases:
        assert response.status_code == status and response.mimetype == "application/json"
        error = response.json["error"]
        assert set(error) == {"message", "type", "param", "code"} and words in error["message"]
        assert error["type"] == "invalid_request_error"


def test_a_full_queue_is_a_429_in_openais_shape(app, client):
    gate = app.extensions["ragserver"].gate
    places = [gate.admit(), gate.admit()]  # one answering, one waiting: max_waiting=1
    try:
        refused = client.post("/v1/chat/completions", json={
            "model": "ragserver", "messages": [{"role": "user", "content": WAL_QUESTION}]})
    finally:
        for place in places:
            place.give_back()
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    error = refused.json["error"]
    assert error["type"] == "rate_limit_error" and "The model is busy" in error["message"]


@pytest.mark.app({"max_answer_tokens": 200}, llm=True)
def test_a_client_that_leaves_mid_stream_frees_the_model(app):
    gate = app.extensions["ragserver"].gate
    response = app.test_client().post("/v1/chat/completions", buffered=False, json={
        "model": "ragserver", "stream": True,
        "messages": [{"role": "user", "content": WAL_QUESTION}]})
    received = b""
    for piece in response.response:
        received += piece
        if received.count(b'"content": "') >= 3:  # the role chunk, then two tokens
            break
    assert gate.busy
    response.close()  # what the server does when the client hangs up
    assert not gate.busy and gate.admitted == 0


def test_no_cross_origin_access_like_api_ask(client):
    """Like /api/ask, and unlike /api/search, no origin may call it from a browser."""
    origin = {"Origin": "https://blog.example"}  # one of RAGSERVER_ALLOWED_ORIGINS
    assert client.get("/api/search?q=wal", headers=origin).headers.get(
        "Access-Control-Allow-Origin") == "https://blog.example"
    for response in (client.get("/v1/models", headers=origin),
                     client.post("/v1/chat/completions", json={}, headers=origin),
                     client.post("/api/ask", json={}, headers=origin)):
        assert "Access-Control-Allow-Origin" not in response.headers


def test_an_earlier_answer_loses_its_sources_list_in_the_history():
    answer = "Run `PRAGMA journal_mode=wal;` [1].\n\nSources:\n[1] WAL — https://til.example/wal"
    assert without_sources(answer) == "Run `PRAGMA journal_mode=wal;` [1]."
    kept = "Three steps.\n\nSources:\nthe manual, then the posts"  # not our list: kept
    assert without_sources(kept) == kept
