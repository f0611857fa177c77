"""The chat page in a real headless Chromium, against gunicorn started from the Procfile."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect, sync_playwright

from conftest import running_server

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SLOW = 60_000  # ms: the first question loads both models


@pytest.fixture(scope="module")
def server_env() -> dict:
    """Extra environment for the server; a test module may override it."""
    return {}


@pytest.fixture(scope="module")
def server(seeded_db, server_env, tmp_path_factory):
    """Base URL of a real gunicorn serving the seeded database, its search model loaded."""
    env = {"RAGSERVER_MAX_ANSWER_TOKENS": "120", **server_env}
    with running_server(seeded_db, tmp_path_factory.mktemp("gunicorn") / "server.log", env) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def chat(browser, server):
    """One desktop chat page, shared by the desktop tests; records stream requests."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(SLOW)
    page.streams = []
    page.on("request", lambda r: "/chat/stream/" in r.url and page.streams.append(r.url))
    page.goto(server + "/")
    yield page
    page.close()


def ask(page, question: str):
    """Submit a question through the form; the new turn (its question shown at once)."""
    before = page.locator("#turns article.turn").count()
    page.fill("#ask textarea[name=question]", question)
    page.click("#ask button[type=submit]")
    turn = page.locator("#turns article.turn").nth(before)
    expect(turn.locator(".question")).to_have_text(question, timeout=5_000)
    expect(page.locator("#ask textarea")).to_have_value("")
    return turn


def lengths(turn) -> dict:
    """Characters so far in the streaming text and in the rendered answer."""
    return turn.evaluate("""t => ({streaming: t.querySelector('.text.streaming').textContent.length,
                                  rendered: t.querySelector('.rendered').textContent.trim().length})""")


def test_answer_streams_then_renders_with_sources(chat):
    """Tokens stream in before the rendered answer, which arrives with a WAL-mode source."""
    turn = ask(chat, "How do I enable WAL mode for a SQLite database?")
    streaming = turn.locator(".text.streaming")
    expect(streaming).not_to_be_empty(timeout=SLOW)
    first = lengths(turn)
    chat.wait_for_function(
        """([t, n]) => t.querySelector('.text.streaming').textContent.length > n
                       || t.querySelector('.rendered').textContent.trim() !== ''""",
        arg=[turn.element_handle(), first["streaming"]])
    second = lengths(turn)
    assert first["rendered"] == second["rendered"] == 0, "answer rendered before streaming was seen"
    assert second["streaming"] > first["streaming"] > 0
    expect(turn.locator(".rendered")).not_to_be_empty(timeout=SLOW)
    expect(streaming).to_be_hidden()
    expect(turn.locator(".stop")).to_be_hidden()
    expect(turn.locator(".status")).to_be_hidden()
    sources = turn.locator(".sources-slot ol.sources li")
    expect(sources.first).to_be_visible()
    href = sources.first.locator("a").get_attribute("href")
    assert href.startswith("https://til.example/sqlite/enabling-wal-mode"), href


def test_stop_halts_the_answer_and_frees_the_model(chat):
    """Stop ends a streaming answer with "Stopped."; the next question is still answered."""
    turn = ask(chat, "How can I run a Python script with its dependencies using uv?")
    expect(turn.locator(".text.streaming")).not_to_be_empty(timeout=SLOW)
    turn.locator("button.stop").click()
    expect(turn.locator(".status")).to_have_text("Stopped.", timeout=5_000)
    expect(turn.locator(".rendered")).not_to_be_empty(timeout=5_000)

    third = ask(chat, "What is a recursive CTE in SQLite?")
    expect(third.locator(".rendered")).not_to_be_empty(timeout=SLOW)
    expect(third.locator(".status")).to_be_hidden()
    expect(third.locator(".error")).to_have_count(0)
    expect(third.locator("ol.sources li").first).to_be_visible()
    chat.screenshot(path="/tmp/chat-desktop.png", full_page=True)
    # sse-close="end" closed every stream: no EventSource reconnected.
    assert len(chat.streams) == len(set(chat.streams)) == chat.locator("article.turn").count()


def test_phone_layout_has_no_horizontal_overflow(browser, server):
    """On a 390x844 phone the form and an answered turn fit the width."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                                  has_touch=True, device_scale_factor=2)
    page = context.new_page()
    page.set_default_timeout(SLOW)
    page.goto(server + "/")
    turn = ask(page, "How do I enable WAL mode for a SQLite database?")
    expect(turn.locator("ol.sources li").first).to_be_visible(timeout=SLOW)
    widths = page.evaluate("""() => ({
        page: document.documentElement.scrollWidth,
        right: Math.max(...[...document.querySelectorAll('#ask, #turns, article.turn')]
                            .map(e => e.getBoundingClientRect().right)),
        overflowing: [...document.querySelectorAll('#ask, #ask *, article.turn, article.turn *')]
                      .filter(e => e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX === 'visible')
                      .map(e => e.tagName + '.' + e.className)})""")
    page.screenshot(path="/tmp/chat-phone.png")  # the viewport: full_page misplaces the sticky form
    context.close()
    assert widths["page"] <= 390, widths
    assert widths["right"] <= 390, widths
    assert widths["overflowing"] == [], widths


def test_search_page_updates_as_you_type(browser, server):
    """Typing on /search swaps in results without a page load and keeps the URL in step."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(SLOW)
    loads = []
    page.on("load", lambda: loads.append(page.url))
    page.goto(f"{server}/search")
    page.locator("#q").press_sequentially("recursive CTE", delay=30)
    first = page.locator("#results li.result").first
    expect(first.locator("a.title")).to_have_text("The simplest recursive CTE")
    expect(first.locator(".snippet mark").first).to_be_visible()
    expect(page).to_have_url(re.compile(r"/search\?q=recursive(\+|%20)CTE$"))
    page.get_by_role("link", name="Next →").click()
    expect(page.locator("#results ol.results")).to_have_attribute("start", "11")
    page.go_back()
    expect(page.locator("#q")).to_have_value("recursive CTE")
    assert len(loads) == 1, loads  # one full page load: everything else was swapped in
    page.close()
