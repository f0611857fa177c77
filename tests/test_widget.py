"""The embeddable search widget in a real headless Chromium, on blog pages from other origins."""

from __future__ import annotations

import re
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from playwright.sync_api import expect

from test_browser import browser, server  # noqa: F401  (fixtures)

BLOG_PAGE = """<!doctype html><html lang="en"><meta charset="utf-8"><title>A blog</title>
<nav id="nav"><a href="/">Home</a></nav>
<p><label>Comment <input id="comment"></label> <button id="elsewhere">Elsewhere</button></p>
<div data-ragserver-related="https://til.example/sqlite/enabling-wal-mode" data-n="3"></div>
<script src="{server}/static/ragserver-search.js" data-endpoint="{server}"
        data-target="#nav" data-placeholder="Search A blog" defer></script></html>"""
POST_PAGE = "<!doctype html><title>A post</title><p>The post."


class BlogHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = self.server.page.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextmanager
def blog_site():
    """A static blog on its own loopback port: another origin than the ragserver's."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), BlogHandler)
    httpd.origin = f"http://127.0.0.1:{httpd.server_port}"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def blogs():
    """Two blogs that will embed the widget: one origin allowed, one not."""
    with blog_site() as allowed, blog_site() as other:
        yield allowed, other


@pytest.fixture(scope="module")
def server_env(blogs):
    """test_browser's server, with the first blog's origin allowed."""
    return {"RAGSERVER_ALLOWED_ORIGINS": blogs[0].origin}


@pytest.fixture(scope="module")
def sites(blogs, server):
    """The ragserver, the two blogs' origins and the demo page."""
    allowed, other = blogs
    allowed.page = other.page = BLOG_PAGE.format(server=server)
    return SimpleNamespace(server=server, allowed=allowed.origin, other=other.origin,
                           demo=f"{server}/static/search-demo.html")


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.route("https://til.example/**", lambda route: route.fulfill(body=POST_PAGE, content_type="text/html"))
    yield page
    context.close()


def widget(page):
    """The widget's parts; Playwright's locators pierce its open shadow root."""
    return SimpleNamespace(dialog=page.locator("ragserver-search dialog"),
                           box=page.get_by_role("combobox", name="Search the blog"),
                           status=page.locator("ragserver-search .status"),
                           options=page.get_by_role("option"))


def type_query(w, query: str):
    """Type a query key by key and wait for its own results, whose Ask row names it."""
    w.box.press_sequentially(query)
    expect(w.options.last).to_have_text(f"Ask the blog: “{query}”")


def search(page, query: str):
    """Open the widget with Ctrl+K, type a query, wait for its results; the widget."""
    w = widget(page)
    page.keyboard.press("Control+K")
    expect(w.dialog).to_be_visible()
    expect(w.box).to_be_focused()
    type_query(w, query)
    return w


def test_cross_origin_search_and_keyboard_navigation(page, sites):
    page.goto(sites.allowed)
    w = search(page, "enable WAL mode")
    first = w.options.first
    expect(first.locator(".title")).to_have_text("Enabling WAL mode for SQLite database files")
    expect(first.locator(".snippet mark").first).to_be_visible()
    expect(w.status).to_have_text(re.compile(r"^\d+ posts?$"))
    expect(first).to_have_attribute("aria-selected", "false")
    w.box.press("ArrowDown")
    w.box.press("ArrowDown")
    expect(w.options.nth(1)).to_have_attribute("aria-selected", "true")
    expect(first).to_have_attribute("aria-selected", "false")
    w.box.press("ArrowUp")
    expect(first).to_have_attribute("aria-selected", "true")
    expect(w.box).to_have_attribute("aria-activedescendant", first.get_attribute("id"))
    w.box.press("Enter")
    page.wait_for_url("https://til.example/**")
    assert page.url.startswith("https://til.example/sqlite/enabling-wal-mode"), page.url


def test_related_posts_fill_their_slot(page, sites):
    """A data-ragserver-related element lists the post's related posts, the posts near it on
    the map and its topic, as /api/related has them; the topic links to the server's map."""
    page.goto(sites.allowed)
    links = page.locator(".ragserver-related ul.ragserver-related-posts li a")
    expect(links).to_have_count(3)
    expect(page.locator(".ragserver-related h2")).to_have_text("Related posts")
    want = page.request.get(f"{sites.server}/api/related?source=sqlite/enabling-wal-mode.md&n=3").json()
    assert links.all_text_contents() == [r["title"] for r in want["related"]]
    assert [a.get_attribute("href") for a in links.all()] == [r["url"] for r in want["related"]]
    nearby = page.locator(".ragserver-related ul.ragserver-nearby-posts li a")
    expect(nearby).to_have_text([r["title"] for r in want["nearby"]])
    expect(page.locator(".ragserver-related h3")).to_have_text("Nearby on the map")
    topic = page.locator(".ragserver-related .ragserver-topic a")
    expect(topic).to_have_text(want["topic"]["label"])
    expect(topic).to_have_attribute("href", sites.server + want["topic"]["url"])


def test_slash_opens_except_while_typing_and_escape_restores_focus(page, sites):
    page.goto(sites.allowed)
    w = widget(page)
    expect(page.locator("ragserver-search .launcher")).to_have_count(0)  # data-target has the button
    page.locator("#comment").press_sequentially("a/b")
    expect(page.locator("#comment")).to_have_value("a/b")
    expect(w.dialog).to_be_hidden()
    page.locator("#elsewhere").focus()
    page.keyboard.press("/")
    expect(w.box).to_be_focused()
    expect(w.box).to_have_value("")
    expect(w.box).to_have_attribute("placeholder", "Search A blog")
    w.box.press_sequentially("wal")
    page.keyboard.press("Escape")
    expect(w.dialog).to_be_hidden()
    expect(page.locator("#elsewhere")).to_be_focused()
    button = page.locator("#nav button")
    button.click()
    expect(w.box).to_be_focused()
    page.mouse.click(5, 5)  # the backdrop
    expect(w.dialog).to_be_hidden()
    expect(button).to_be_focused()


def test_origin_not_allowed_is_blocked_by_cors(page, sites):
    page.goto(sites.other)
    with page.expect_console_message(lambda message: "CORS policy" in message.text):
        w = search(page, "enable WAL mode")
    expect(w.status).to_have_text("Search is unavailable")
    expect(w.options).to_have_count(1)  # only "Ask the blog"


def test_ask_row_opens_the_chat_page_with_the_question(page, sites):
    page.goto(sites.allowed)
    question = "How do I enable WAL mode?"
    w = search(page, question)
    w.box.press("ArrowUp")  # from no selection up to the last option
    expect(w.options.last).to_have_attribute("aria-selected", "true")
    w.box.press("Enter")
    page.wait_for_url(f"{sites.server}/?q=*")
    expect(page.locator("#question")).to_have_value(question)


def test_demo_page_searches_its_own_origin(page, sites):
    page.goto(sites.demo)
    expect(page.locator("pre")).to_have_text(
        f'<script src="{sites.server}/static/ragserver-search.js" data-endpoint="{sites.server}" defer></script>')
    w = widget(page)
    expect(page.get_by_role("button", name="Search Ctrl K")).to_be_visible()
    page.keyboard.press("Meta+K")
    type_query(w, "recursive CTE")
    expect(w.options.first.locator(".title")).to_have_text("The simplest recursive CTE")
    second = w.options.nth(1)
    second.hover()
    expect(second).to_have_attribute("aria-selected", "true")
    href = second.locator("a").get_attribute("href")
    assert href.startswith("https://til.example/"), href
    second.click()
    page.wait_for_url(lambda url: url == href)


def test_phone_layout_fits_the_width(browser, sites):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                                  has_touch=True, device_scale_factor=2)
    page = context.new_page()
    page.goto(sites.demo)
    w = widget(page)
    page.get_by_role("button", name="Search").tap()
    type_query(w, "How do I enable WAL mode for a SQLite database?")
    page.screenshot(path="/tmp/widget-phone.png")
    width = page.evaluate("document.documentElement.scrollWidth")
    box = w.dialog.bounding_box()
    options = [option.bounding_box() for option in w.options.all()]
    context.close()
    assert width <= 390
    assert box["x"] >= 0 and box["y"] >= 0, box
    assert box["x"] + box["width"] <= 390 and box["y"] + box["height"] <= 844, box
    assert len(options) > 2 and max(o["x"] + o["width"] for o in options) <= 390, options


HOSTILE = [
    {"title": "<img src=x onerror=alert(1)>", "url": "javascript:alert(1)", "anchor": "", "date": None,
     "snippet": '<mark>ok</mark><img src=x onerror="window.pwned=1"><script>window.pwned=1</script>'},
    {"title": "data", "url": " data:text/html,<script>alert(1)</script>", "anchor": "", "date": "2024-01-02",
     "snippet": '<b onclick="window.pwned=1"><mark style="color:red" onmouseover="window.pwned=1">deep</mark></b>'},
    {"title": "fine", "url": "/posts/fine", "anchor": "part", "date": None, "snippet": "plain"},
]


def test_hostile_results_are_rendered_inert(page, sites):
    """A hostile server's results (the response under test, so faked here): text only, no links."""
    alerts = []
    page.on("dialog", lambda dialog: (alerts.append(dialog.message), dialog.dismiss()))
    page.route(f"{sites.server}/api/search?**", lambda route: route.fulfill(
        json={"query": "x", "mode": "hybrid", "results": HOSTILE, "took_ms": 1}))
    page.goto(sites.demo)
    w = search(page, "x")
    expect(w.options).to_have_count(4)
    first, second, third = (w.options.nth(i) for i in range(3))
    expect(first.locator(".title")).to_have_text(HOSTILE[0]["title"])
    expect(first.locator("mark")).to_have_text("ok")
    expect(second.locator("mark")).to_have_text("deep")
    expect(second.locator(".date")).to_have_text("2024-01-02")
    w.box.press("Enter")  # the first result is no link: Enter only selects it
    expect(first).to_have_attribute("aria-selected", "true")
    second.locator("mark").hover()  # the stripped onmouseover must not run
    expect(second).to_have_attribute("aria-selected", "true")
    expect(first.locator("a")).to_have_count(0)
    expect(second.locator("a")).to_have_count(0)
    assert third.locator("a").get_attribute("href") == "/posts/fine#part"
    found = page.evaluate("""() => {
        const root = document.querySelector('ragserver-search').shadowRoot;
        return {bad: root.querySelectorAll('img, script, b').length,
                others: [...root.querySelectorAll('.snippet *')].filter(e => e.tagName !== 'MARK').length,
                attributes: [...root.querySelectorAll('mark')].map(e => e.attributes.length),
                pwned: typeof window.pwned};
    }""")
    assert found == {"bad": 0, "others": 0, "attributes": [0, 0], "pwned": "undefined"}, found
    assert page.url == sites.demo and alerts == [], (page.url, alerts)
