"""/mcp: the blog's MCP tools, called by the MCP SDK's own client over streamable HTTP,
against gunicorn from the Procfile serving the seeded database with the real SmolLM2."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from conftest import forget_rate_limits, running_server
from ragserver.activity import Activity
from ragserver.storage import StoredPassage
from ragserver.results import post_text
from ragserver.web.mcp_endpoint import refuse_origin
from test_chat import WAL_QUESTION

WAL_TITLE = "Enabling WAL mode for SQLite database files"
WAL_URL = "https://til.example/sqlite/enabling-wal-mode"
UNCOVERED = "What is the capital of France?"  # below the relevance gate (test_answer.py)
SEARCH_RATE = 6  # 127.0.0.1 spends 5 (the warm-up search, 4 tool calls); others have their own
ASK_RATE = 2  # 127.0.0.1 asks twice


@pytest.fixture(scope="module")
def activity_file(tmp_path_factory):
    """The activity store the server keeps answers in."""
    return tmp_path_factory.mktemp("activity") / "activity.db"


@pytest.fixture(scope="module")
def server(seeded_db, tmp_path_factory, activity_file):
    """Base URL of gunicorn serving the seeded database: SmolLM2 answers (short), one
    proxy is trusted (X-Forwarded-For names the client), and the limits are small."""
    forget_rate_limits(seeded_db)
    env = {"RAGSERVER_LLM_MODEL": "smollm2", "RAGSERVER_MAX_ANSWER_TOKENS": "60",
           "RAGSERVER_TRUSTED_PROXIES": "1", "RAGSERVER_SEARCH_RATE": str(SEARCH_RATE),
           "RAGSERVER_ASK_RATE": str(ASK_RATE),
           "RAGSERVER_ALLOWED_ORIGINS": "https://blog.example",
           "RAGSERVER_ACTIVITY_DB": str(activity_file)}
    with running_server(seeded_db, tmp_path_factory.mktemp("gunicorn") / "server.log", env) as url:
        yield url


def with_client(url: str, use, *, mode: str = "auto", client_address: str | None = None):
    """Run `await use(client)` with an MCP SDK Client connected to url/mcp; `client_address`
    is sent as X-Forwarded-For, as the trusted proxy would."""
    async def run():
        headers = {"X-Forwarded-For": client_address} if client_address else {}
        async with httpx2.AsyncClient(headers=headers,
                                      timeout=httpx2.Timeout(30, read=300)) as http:
            transport = streamable_http_client(f"{url}/mcp", http_client=http)
            async with Client(transport, mode=mode) as client:
                return await use(client)
    return asyncio.run(run())


def call(url: str, tool: str, arguments: dict, **options):
    """One tool call: the CallToolResult."""
    return with_client(url, lambda client: client.call_tool(tool, arguments), **options)


def error_text(result) -> str:
    assert result.is_error, result.structured_content
    return result.content[0].text


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_lists_the_four_tools(server, mode):
    """Both the 2026 single-exchange protocol (auto) and the initialize handshake (legacy)."""
    tools = with_client(server, lambda client: client.list_tools(), mode=mode).tools
    assert sorted(t.name for t in tools) == ["ask", "get_post", "related_posts", "search_posts"]
    search = next(t for t in tools if t.name == "search_posts")
    assert "search" in search.description.lower()
    assert search.input_schema["required"] == ["query"]
    assert search.input_schema["properties"]["limit"]["maximum"] == 50
    assert all(t.annotations.read_only_hint for t in tools)


def test_search_get_and_related(server):
    """search_posts finds the WAL post with a plain snippet; get_post reads it whole;
    related_posts lists posts like it; an unknown url is a clear tool error."""
    found = call(server, "search_posts", {"query": "turn on write-ahead logging in sqlite",
                                          "limit": 3})
    assert not found.is_error, found.content
    results = found.structured_content["results"]
    assert 1 <= len(results) <= 3
    hit = next(r for r in results if r["title"] == WAL_TITLE)
    assert hit["url"] == WAL_URL
    assert hit["snippet"] and "<mark>" not in hit["snippet"] and "&amp;" not in hit["snippet"]
    assert results == sorted(results, key=lambda r: -r["score"])
    assert json.loads(found.content[0].text) == found.structured_content  # for any client

    post = call(server, "get_post", {"url": hit["url"]}).structured_content
    assert post["title"] == WAL_TITLE and post["url"] == WAL_URL and not post["truncated"]
    text = post["text"]
    assert text.startswith(f"# {WAL_TITLE}\n\n")
    assert "PRAGMA journal_mode=WAL" in text and "sqlite-utils enable-wal *.db" in text
    assert text.index("## Turning WAL mode off again") < text.index("## Using sqlite-utils")

    related = call(server, "related_posts", {"url": WAL_URL, "limit": 3}).structured_content
    assert related["title"] == WAL_TITLE
    assert 1 <= len(related["related"]) <= 3
    assert WAL_URL not in [r["url"] for r in related["related"]]
    assert all(r["url"].startswith("https://til.example/") for r in related["related"])

    missing = error_text(call(server, "get_post", {"url": "https://til.example/no/such-post"}))
    assert "no post at 'https://til.example/no/such-post'" in missing


def test_bad_arguments_are_tool_errors(server):
    """Arguments out of the schema or empty: a message the model can act on, no HTTP error,
    and nothing counted against the limits (127.0.0.1 spent its budget above)."""
    assert "less than or equal to 50" in error_text(
        call(server, "search_posts", {"query": "sqlite", "limit": 500}))
    assert "Please type a search." in error_text(call(server, "search_posts", {"query": "  "}))
    assert "Give the post's url" in error_text(call(server, "related_posts", {"url": ""}))
    assert "Please type a question." in error_text(call(server, "ask", {"question": ""}))


def test_ask_answers_with_numbered_sources(server, activity_file):
    """ask: SmolLM2's answer with its numbered sources, and the quote; a question the posts
    do not cover says so without the model."""
    answer = call(server, "ask", {"question": WAL_QUESTION}).structured_content
    assert answer["answered"] is True
    kept = [t for t in Activity(str(activity_file)).turns_since(0) if t.via == "mcp"]
    assert kept[-1].question == WAL_QUESTION and kept[-1].state == "done" and kept[-1].sources
    assert answer["answer"].strip()
    assert [s["n"] for s in answer["sources"]] == list(range(1, len(answer["sources"]) + 1))
    assert any(s["title"] == WAL_TITLE and s["link"].startswith(WAL_URL)
               for s in answer["sources"])
    assert answer["quote"] and 1 <= answer["quote_source"] <= len(answer["sources"])

    uncovered = call(server, "ask", {"question": UNCOVERED}).structured_content
    assert uncovered["answered"] is False
    assert uncovered["sources"] == [] and "couldn't find" in uncovered["answer"]


def test_rate_limits_key_on_the_forwarded_address(server):
    """Over the search limit a tool says how long to wait; the key is the address ProxyFix
    took from X-Forwarded-For, so another client is not held up. ask has its own limit."""
    first = "203.0.113.7"
    for _ in range(SEARCH_RATE):
        assert not call(server, "search_posts", {"query": "uv"}, client_address=first).is_error
    refused = error_text(call(server, "get_post", {"url": WAL_URL}, client_address=first))
    assert "Too many requests from your address: please wait" in refused
    assert "seconds and try again" in refused
    assert not call(server, "search_posts", {"query": "uv"}, client_address="203.0.113.8").is_error

    for _ in range(ASK_RATE):
        assert not call(server, "ask", {"question": UNCOVERED}, client_address=first).is_error
    assert "Too many questions from your address" in error_text(
        call(server, "ask", {"question": UNCOVERED}, client_address=first))


def post(url: str, headers: dict | None = None, method: str = "POST") -> tuple[int, bytes]:
    """A raw request to /mcp: (status, body)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode()
    request = urllib.request.Request(
        f"{url}/mcp", data=body if method == "POST" else None, method=method,
        headers={"Content-Type": "application/json", "MCP-Protocol-Version": "2025-11-25",
                 "Accept": "application/json, text/event-stream", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_http_edges(server):
    """Pages of other origins are refused (DNS rebinding), loopback and allowed ones are
    not; GET and DELETE are 405 (no stream, no session), not a request held open."""
    assert post(server)[0] == 200
    status, body = post(server, {"Origin": "http://evil.example:8000"})
    assert status == 403 and b"RAGSERVER_ALLOWED_ORIGINS" in body
    assert post(server, {"Origin": "https://blog.example"})[0] == 200
    assert post(server, {"Origin": "http://localhost:6274"})[0] == 200
    assert post(server, method="GET")[0] == 405
    assert post(server, method="DELETE")[0] == 405
    assert post(server, {"Content-Type": "text/plain"})[0] == 400


def test_refuse_origin():
    allowed = ("https://blog.example",)
    assert not refuse_origin("", allowed)
    assert not refuse_origin("https://blog.example/", allowed)
    assert not refuse_origin("http://127.0.0.1:5173", allowed)
    assert not refuse_origin("http://[::1]:8000", allowed)
    assert refuse_origin("https://blog.example.evil", allowed)
    assert refuse_origin("http://localhost.evil.example", allowed)
    assert refuse_origin("null", allowed)


def test_post_text_puts_passages_under_their_headings():
    def passage(position, path, text):
        return StoredPassage(position, 1, position, tuple(path), "", text, "")

    passages = [passage(3, ["Usage", "Options"], "d"), passage(0, [], "a"),
                passage(1, ["Usage"], "b"), passage(2, ["Usage"], "c"),
                passage(4, ["Notes"], "e")]
    assert post_text("T", passages) == "# T\n\na\n\n## Usage\n\nb\n\nc\n\n### Options\n\nd\n\n## Notes\n\ne"
