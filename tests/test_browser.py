"""The chat page in a real headless Chromium, against gunicorn started from the Procfile."""

from __future__ import annotations

import re
import threading

import pytest
from playwright.sync_api import expect, sync_playwright
from werkzeug.serving import make_server

from conftest import running_server
from ragserver import create_app
from ragserver.storage import open_storage
from ragserver.web.chat import example_question
from test_chat import INVENTED, WAL_QUESTION, finished_turn

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


def test_a_streamed_answer_takes_feedback_in_place(chat, server):
    """The answer the stream swaps in carries its feedback form, which htmx sends."""
    turn = ask(chat, "How do I list the tables of a SQLite database?")
    form = turn.locator("form.feedback")
    expect(form).to_be_visible(timeout=SLOW)
    form.locator("button[value=up]").click()
    expect(turn.locator(".feedback .thanks")).to_have_text("Thank you: your feedback was recorded.")
    turn_id = turn.get_attribute("id").removeprefix("turn-")
    expect(turn.locator("a.permalink")).to_have_attribute("href", f"/a/{turn_id}")


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


# -- typing, example questions, the quick answer ----------------------------

def turn_count(page) -> int:
    return page.locator("#turns article.turn").count()


def test_enter_asks_and_shift_enter_starts_a_new_line(browser, server):
    """Enter sends the question (htmx, the examples make way); Shift+Enter adds a line;
    Enter in an empty box does nothing."""
    context = browser.new_context(permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.set_default_timeout(SLOW)
    page.goto(server + "/")
    box = page.locator("#question")
    expect(page.locator("#examples")).to_be_visible()
    box.press("Enter")
    box.fill("   ")
    box.press("Enter")
    box.fill("How do I call pip")
    box.press("Shift+Enter")
    box.press_sequentially("from Python?")
    page.wait_for_timeout(300)  # time for a submission that should not happen
    expect(box).to_have_value("How do I call pip\nfrom Python?")
    assert turn_count(page) == 0

    question = "How do I call pip programmatically from Python?"
    box.fill(question)
    box.press("Enter")
    turn = page.locator("#turns article.turn").first
    expect(turn.locator(".question")).to_have_text(question, timeout=5_000)
    expect(box).to_have_value("")
    expect(page.locator("#examples")).to_be_hidden()
    expect(turn.locator(".rendered")).not_to_be_empty(timeout=SLOW)
    assert turn_count(page) == 1
    # Copy answer on a streamed answer: its Markdown, as the server checked it.
    copy = turn.locator("button.copy")
    if copy.count():  # not when the posts did not cover the question
        copy.click()
        expect(copy).to_have_text("Copied")
        assert page.evaluate("navigator.clipboard.readText()") == copy.get_attribute("data-copy")
    context.close()


def test_example_questions_fill_in_the_form(browser, server, seeded_db):
    """An empty conversation offers questions from the newest posts and a link to search;
    a click puts one in the form, ready to send or edit, without sending it."""
    conn = open_storage(seeded_db)
    expected = [example_question(p.title) for p in conn.example_posts(4)]
    conn.close()
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server + "/")
    examples = page.locator("button.example")
    expect(examples).to_have_text(expected)
    expect(page.locator("#examples a[href='/search']")).to_be_visible()
    examples.nth(1).click()
    box = page.locator("#question")
    expect(box).to_have_value(expected[1])
    expect(box).to_be_focused()
    page.wait_for_timeout(300)
    assert turn_count(page) == 0
    expect(page.locator("#examples")).to_be_visible()
    page.close()


def test_quick_answer_comes_before_the_answer_and_links_its_source(chat):
    """The quoted quick answer is in the turn while tokens still stream, with its source."""
    chat.evaluate("""() => {
        window.quickSeen = {};
        new MutationObserver(() => {
            for (const turn of document.querySelectorAll('#turns article.turn')) {
                if (turn.id in window.quickSeen || !turn.querySelector('.quick')) continue;
                window.quickSeen[turn.id] = turn.querySelector('.rendered').textContent.trim();
            }
        }).observe(document.getElementById('turns'), {childList: true, subtree: true});
    }""")
    turn = ask(chat, WAL_QUESTION)
    quick = turn.locator(".quick")
    expect(quick).to_be_visible(timeout=SLOW)
    expect(turn.locator(".rendered")).not_to_be_empty(timeout=SLOW)
    turn_id = turn.get_attribute("id")
    assert chat.evaluate("id => window.quickSeen[id]", turn_id) == ""  # nothing rendered yet
    link = quick.locator(".attribution a").get_attribute("href")
    assert link.startswith("https://til.example/sqlite/enabling-wal-mode"), link
    assert link in [a.get_attribute("href") for a in turn.locator("ol.sources li a").all()]
    cite = quick.locator("a.cite").get_attribute("href")
    expect(turn.locator(f"[id='{cite[1:]}'] a")).to_have_attribute("href", link)


# -- a finished answer, served in-process so that the test can make it -------

@pytest.fixture(scope="module")
def local(seeded_db):
    """(app, base URL) of the app served by werkzeug in this process: a test adds a turn
    with a known answer to its conversations, then opens it. No model is loaded."""
    app = create_app({"db": str(seeded_db)})
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield app, f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def open_finished_turn(browser, local, cid: str, **context_args):
    """A page showing one finished answer with an unsupported sentence; (page, turn)."""
    app, url = local
    turn = finished_turn(app, cid)
    turn.answer += "\n\n```sql\nPRAGMA journal_mode=wal;\n```"  # shown otherwise than written
    context = browser.new_context(**context_args)
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.goto(f"{url}/?c={cid}")
    return page, turn


def test_an_unsupported_sentence_is_marked_with_a_tooltip(browser, local):
    page, _ = open_finished_turn(browser, local, "marked")
    mark = page.locator(".rendered .unsupported")
    expect(mark).to_have_count(1)
    expect(mark).to_be_visible()
    expect(mark).to_have_attribute("title", re.compile(r"^Not found in the sources"))
    before = mark.evaluate("m => m.previousSibling.textContent")
    assert before.endswith(INVENTED), before
    page.context.close()


def test_copy_answer_copies_the_markdown(browser, local):
    page, turn = open_finished_turn(browser, local, "copy",
                                    permissions=["clipboard-read", "clipboard-write"])
    copy = page.locator("button.copy")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == turn.answer
    expect(copy).to_have_text("Copy answer", timeout=5_000)  # after 2 seconds
    page.context.close()


def test_copy_answer_without_a_clipboard_selects_the_answer(browser, local):
    page, _ = open_finished_turn(browser, local, "no-clipboard")
    page.add_init_script("Object.defineProperty(navigator, 'clipboard', {value: undefined})")
    page.reload()
    page.locator("button.copy").click()
    expect(page.locator("button.copy")).to_have_text("Press Ctrl+C")
    selected = page.evaluate("getSelection().toString()")
    assert INVENTED in selected and "PRAGMA journal_mode=wal;" in selected
    assert "Copy answer" not in selected and "Timings" not in selected
    page.context.close()


def test_timings_are_closed_until_asked_for(browser, local):
    page, _ = open_finished_turn(browser, local, "timings")
    timings = page.locator("details.timings")
    expect(timings).not_to_have_attribute("open", re.compile(".*"))
    expect(timings.locator("dl")).to_be_hidden()
    timings.locator("summary").click()
    expect(timings.locator("dl")).to_be_visible()
    expect(timings.locator("dt").first).to_have_text("Finding passages")
    expect(timings.locator("dd").first).to_have_text("12 ms")
    assert float(timings.evaluate("d => getComputedStyle(d).fontSize")[:-2]) >= 12
    page.screenshot(path="/tmp/chat-finished.png", full_page=True)
    page.context.close()


def test_feedback_is_sent_from_under_the_answer_and_the_permalink_opens_it(browser, local):
    """👎 with a comment goes to the server by htmx (no page load, no CSP violation), and
    "Link to this answer" opens the answer's own page."""
    from test_explore_browser import WATCH_CSP

    app, url = local
    turn = finished_turn(app, "feedback-browser")
    app.extensions["ragserver"].conversations.finish(turn)
    context = browser.new_context()
    context.add_init_script(WATCH_CSP)
    page = context.new_page()
    page.set_default_timeout(10_000)
    loads = []
    page.on("load", lambda: loads.append(page.url))
    page.goto(f"{url}/?c=feedback-browser")
    form = page.locator(f"#feedback-{turn.id}")
    form.locator("input[name=comment]").fill("It should say how to check the mode")
    form.locator("button[value=down]").click()
    expect(page.locator(f"#feedback-{turn.id} .thanks")).to_have_text(
        "Thank you: your feedback was recorded.")
    assert len(loads) == 1  # the page stayed
    given = [f for f in app.extensions["ragserver"].activity.feedback_since(0)
             if f["turn"] == turn.id]
    assert [(f["vote"], f["comment"]) for f in given] == [(-1, "It should say how to check the mode")]
    page.locator(f"#turn-{turn.id} a.permalink").click()
    expect(page.locator("h1")).to_have_text("An answer from the blog")
    assert page.url == f"{url}/a/{turn.id}"
    expect(page.locator(".question")).to_have_text(WAL_QUESTION)
    expect(page.locator("ol.sources li")).to_have_count(1)
    assert page.evaluate("window.cspViolations || []") == []
    context.close()
