"""The blog as tools for AI agents: the MCP server (Model Context Protocol) that /mcp serves.

Four tools over the same functions as the pages and the JSON API: search_posts (as
/api/search), get_post, related_posts (as /api/related) and ask (as /api/ask, collected
into one reply). Each runs its work on a worker thread inside the Flask app's context, so
`services()`, the rate limits and the model gate are the ones every other view uses.
Failures a caller can act on (a bad argument, an unknown post, a limit) come back as tool
errors with a message for the model to read; mcp_endpoint.py serves the server.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Annotated, Any, Callable

import anyio
from flask import Flask
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field
from werkzeug.exceptions import HTTPException

from ..embedder import EmbedderError
from ..llm import LLMError
from ..related import NotFound, related_posts as find_related
from ..render import highlight
from ..results import post_text
from ..storage import BackendUnavailable, database_errors
from .chat import _run_turn, start_turn
from .limits import check_rate, take_place
from .search import MAX_RESULTS, _search
from .services import services
from .validation import BadQuestion, check_question

MAX_RELATED = 10
MAX_POST_CHARS = 60_000  # get_post's text beyond this is cut (a model's context is finite)

INSTRUCTIONS = (
    "Tools over one blog's posts. Find posts with search_posts, read one with get_post "
    "(by the url a result gave), find similar posts with related_posts, or let ask answer a "
    "question from the posts with numbered sources. Cite posts by their url.")


# -- what the tools return ----------------------------------------------------

class FoundPost(BaseModel):
    title: str
    url: str = Field(description="The post's address; give it to get_post or related_posts.")
    date: str | None = Field(description="Publication date (YYYY-MM-DD) when the post has one.")
    snippet: str = Field(description="Plain text from the post's best matching passage.")
    score: float = Field(description="Relevance: higher is better; compare within one search.")


class SearchResults(BaseModel):
    query: str
    results: list[FoundPost] = Field(description="Best first; one entry per post.")


class WholePost(BaseModel):
    title: str
    url: str
    date: str | None
    tags: list[str]
    text: str = Field(description="The post as Markdown, rebuilt from the passages stored "
                                  "for search: its words, its headings, approximate layout.")
    truncated: bool = Field(description=f"True when the text was cut at {MAX_POST_CHARS:,} "
                                        "characters.")


class RelatedPost(BaseModel):
    title: str
    url: str
    date: str | None
    score: float = Field(description="Similarity to the post, from 0 to 1.")


class RelatedPosts(BaseModel):
    title: str = Field(description="The post the others are related to.")
    url: str
    related: list[RelatedPost] = Field(description="Most similar first.")


class AnswerSource(BaseModel):
    n: int = Field(description="The number the answer cites as [n].")
    title: str
    link: str = Field(description="The post's url with the #anchor of the passage quoted.")


class Answer(BaseModel):
    answer: str = Field(description="Markdown citing sources as [n]; when answered is false, "
                                    "a note that the posts do not cover the question.")
    answered: bool = Field(description="Whether the posts covered the question: false when "
                                       "no passage was close enough to answer from.")
    sources: list[AnswerSource] = Field(description="The passages the answer was given, "
                                                    "numbered.")
    quote: str | None = Field(description="The sentences of one source that best answer the "
                                          "question, verbatim (no model involved); null if "
                                          "none do.")
    quote_source: int | None = Field(description="The [n] of the source quoted.")


# -- running the work -----------------------------------------------------------

def client_address(ctx: Context) -> str:
    """The caller's address as the rate limits key it: the HTTP request's client, which
    ProxyFix has already taken from X-Forwarded-For when proxies are trusted."""
    request = ctx.request_context.request
    client = getattr(request, "client", None)
    return client.host if client else ""


def _tool_error(error: Exception) -> ToolError:
    """The message a caller can act on, for the errors the views answer 4xx or 503."""
    if isinstance(error, HTTPException):  # the rate limits and the gate: 429
        return ToolError(error.description)
    if isinstance(error, (*database_errors(), BackendUnavailable)):
        return ToolError(f"The posts cannot be read right now ({error}).")
    if isinstance(error, EmbedderError):
        return ToolError(f"The search model cannot be loaded ({error}).")
    if isinstance(error, LLMError):
        return ToolError(f"The answer model cannot be loaded ({error}).")
    return ToolError(str(error))  # BadQuestion, NotFound: written for the caller


async def _in_app(app: Flask, work: Callable[[], Any]):
    """Run `work` on a worker thread inside the app's context (the event loop stays free
    for other requests); anticipated failures become tool errors."""
    def run():
        with app.app_context():
            return work()

    try:
        return await anyio.to_thread.run_sync(run)
    except (HTTPException, BadQuestion, NotFound, *database_errors(), BackendUnavailable,
            EmbedderError, LLMError) as error:
        raise _tool_error(error) from error


def _require_posts() -> None:
    if not services().pool.has_database():
        raise NotFound("No posts have been ingested yet: the blog has nothing to search.")


# -- the server ----------------------------------------------------------------

@contextmanager
def _logging_untouched():
    """Undo what MCPServer() does to logging: it calls logging.basicConfig, which would give
    the worker's root logger a handler at INFO, and every library's INFO lines with it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def build_server(app: Flask) -> MCPServer:
    """The MCP server of `app`, with its four tools."""
    with _logging_untouched():
        server = MCPServer("ragserver", title="Blog search and answers",
                           instructions=INSTRUCTIONS)
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    @server.tool(annotations=read_only)
    async def search_posts(
        query: Annotated[str, Field(description="Words or a question, as typed into a "
                                                "search box.")],
        ctx: Context,
        limit: Annotated[int, Field(ge=1, le=MAX_RESULTS,
                                    description="Most posts to return.")] = 10,
    ) -> SearchResults:
        """Search the blog's posts by meaning and by keyword (hybrid search).

        Returns the best matching posts, best first, each with its title, url, date, a
        plain-text snippet of its best passage and a score. Use get_post with a result's
        url to read the whole post.
        """
        client = client_address(ctx)

        def work():
            text = check_question(query, noun="search")
            check_rate(services().search_limit, "searches", client)
            _require_posts()
            groups = _search(text, limit, "hybrid")
            return SearchResults(query=text, results=[
                FoundPost(title=hit.title, url=hit.url, date=hit.date,
                          snippet=highlight(hit.text, text).striptags(),
                          score=round(hit.score, 4))
                for hit, *_ in groups])

        return await _in_app(app, work)

    @server.tool(annotations=read_only)
    async def get_post(
        url: Annotated[str, Field(description="The post's url, as search_posts, "
                                              "related_posts or ask gave it.")],
        ctx: Context,
    ) -> WholePost:
        """Read one post of the blog in full: its title, url, date, tags and whole text
        as Markdown."""
        client = client_address(ctx)

        def work():
            wanted = _post_request(url, client)
            with services().reading() as conn:
                post = conn.find_post(url=wanted)
                if post is None:
                    raise NotFound(f"There is no post at {wanted!r} on this blog. Use a url "
                                   "exactly as search_posts or related_posts returned it.")
                passages = conn.passages_for_post(post.id)
            text = post_text(post.title, passages)
            return WholePost(title=post.title, url=post.url, date=post.date,
                             tags=list(post.tags), text=text[:MAX_POST_CHARS],
                             truncated=len(text) > MAX_POST_CHARS)

        return await _in_app(app, work)

    @server.tool(annotations=read_only)
    async def related_posts(
        url: Annotated[str, Field(description="The post's url, as search_posts gave it.")],
        ctx: Context,
        limit: Annotated[int, Field(ge=1, le=MAX_RELATED,
                                    description="Most related posts to return.")] = 5,
    ) -> RelatedPosts:
        """Find the blog's posts most similar to one post (by the meaning of their whole
        text), most similar first."""
        client = client_address(ctx)

        def work():
            wanted = _post_request(url, client)
            with services().reading() as conn:
                try:
                    post, similar = find_related(conn, url=wanted, n=limit)
                except NotFound:
                    raise NotFound(f"There is no post at {wanted!r} on this blog. Use a url "
                                   "exactly as search_posts returned it.") from None
            return RelatedPosts(title=post.title, url=post.url, related=[
                RelatedPost(title=r.title, url=r.url, date=r.date, score=round(r.score, 4))
                for r in similar])

        return await _in_app(app, work)

    @server.tool(annotations=read_only)
    async def ask(
        question: Annotated[str, Field(description="A question in plain words, about what "
                                                   "the blog's posts cover.")],
        ctx: Context,
    ) -> Answer:
        """Ask the blog a question: a small local language model answers from the posts'
        best matching passages, citing them as [n], and the numbered sources are returned
        with their links.

        Slower than search_posts (seconds to a minute: one model answers one question at
        a time). If answered is false the posts do not cover the question; do not retry
        with the same words. Check important claims against the sources.
        """
        client = client_address(ctx)

        def work():
            text = check_question(question)
            svc = services()
            check_rate(svc.ask_limit, "questions", client)
            place = take_place(svc.gate)
            try:
                # WSGI gives no notice of a client that went away: the answer runs to
                # its end, holding its place like any question. It is kept in the
                # activity store as any answer is (via "mcp").
                turn = start_turn(text, "mcp")
                return _collect(_run_turn(turn.conversation, turn, []))
            finally:
                place.give_back()

        return await _in_app(app, work)

    return server


def _post_request(url: str, client: str) -> str:
    """The url a tool about one post was given, once it is counted against the client's
    search limit and there are posts to look in."""
    wanted = url.strip()
    if not wanted:
        raise NotFound("Give the post's url, as search_posts returns it.")
    check_rate(services().search_limit, "requests", client)
    _require_posts()
    return wanted


def _collect(events) -> Answer:
    """An answer's events as one Answer; an error event as a tool error."""
    sources, tokens, checked, quick, answered = [], [], None, None, False
    for event in events:
        if event.kind == "sources":
            sources = [AnswerSource(n=s["n"], title=s["title"], link=s["link"])
                       for s in event.data]
        elif event.kind == "quick":
            quick = event.data
        elif event.kind == "token":
            tokens.append(event.data)
        elif event.kind == "checked":
            checked = event.data["text"]
        elif event.kind == "error":
            raise ToolError(event.data["message"])
        elif event.kind == "done":
            answered = bool(event.data.get("answered"))
    quote, n = (quick["text"], quick["n"]) if quick else (None, None)
    text = checked if checked is not None else "".join(tokens)
    if not text and quote:  # no answer model (RAGSERVER_LLM_MODEL=none): the quote answers
        text = f"{quote}\n\n[{n}]"
    return Answer(answer=text, answered=answered, sources=sources, quote=quote, quote_source=n)
