"""The /explore page in a real headless Chromium, against gunicorn started from the Procfile:
tooltips by pointer and keyboard, search as you type, topics lit in place, a phone's width,
and a Content-Security-Policy that nothing on the page breaks."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest
from playwright.sync_api import expect

from test_browser import browser, server, server_env  # noqa: F401  (fixtures)

WAL = "sqlite/enabling-wal-mode.md"
# Every Content-Security-Policy violation the page reports, kept for the test to read.
WATCH_CSP = """document.addEventListener("securitypolicyviolation", (event) => {
    (window.cspViolations = window.cspViolations || []).push(
        `${event.violatedDirective} ${event.blockedURI} ${event.sourceFile}:${event.lineNumber}`);
});"""


@pytest.fixture
def open_page(browser, server):
    """Open /explore (or another path) in a new context; yields the opener. Each page records
    its loads, console errors and warnings, and CSP violations, which must stay empty."""
    pages = []

    def opener(path: str = "/explore", **context_args):
        context = browser.new_context(**{"viewport": {"width": 1280, "height": 900},
                                         **context_args})
        context.add_init_script(WATCH_CSP)
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.loads, page.console = [], []

        def on_console(message):
            # The browser asks for /favicon.ico on its own; the server has none.
            if message.type in ("error", "warning") and \
                    not message.location.get("url", "").endswith("/favicon.ico"):
                page.console.append(f"{message.type}: {message.text}")

        page.on("load", lambda: page.loads.append(page.url))
        page.on("console", on_console)
        page.goto(server + path)
        pages.append(page)
        return page

    yield opener
    for page in pages:
        violations = page.evaluate("window.cspViolations || []")
        console = page.console
        page.context.close()
        assert violations == [] and console == [], (violations, console)


def clear_point(page):
    """A point no other point covers at its centre (one a pointer can reach)."""
    source = page.evaluate("""() => [...document.querySelectorAll('a.point')].find((point) => {
        const box = point.getBoundingClientRect();
        const top = document.elementFromPoint(box.x + box.width / 2, box.y + box.height / 2);
        return top && top.closest('a.point') === point;
    })?.dataset.source""")
    assert source, "every point is covered by another"
    return page.locator(f"a.point[data-source='{source}']")


def test_hovering_a_point_shows_its_title(open_page):
    page = open_page()
    point = clear_point(page)
    title = point.locator("title").text_content()
    assert title.endswith(")")  # "Post title (topic label)"
    tip = page.locator("#map-tip")
    expect(tip).to_be_hidden()
    point.hover()
    expect(tip).to_be_visible()
    expect(tip).to_have_text(title)
    # The native tooltip gives way to this one; the title stays the link's name.
    expect(point).to_have_attribute("aria-label", title)
    expect(point.locator("title")).to_have_count(0)
    figure, box = page.locator("figure.map").bounding_box(), tip.bounding_box()
    assert figure["x"] <= box["x"] and box["x"] + box["width"] <= figure["x"] + figure["width"] + 1
    page.mouse.move(1, 1)
    expect(tip).to_be_hidden()


def test_tab_reaches_the_points_and_shows_the_tooltip(open_page):
    page = open_page()
    first = page.locator("a.point").first
    title = first.locator("title").text_content()
    page.locator("#explore-axis").focus()
    seen = []
    for _ in range(5):
        page.keyboard.press("Tab")
        seen.append(page.evaluate("document.activeElement.className.baseVal ?? "
                                  "document.activeElement.className"))
        if seen[-1].startswith("point"):
            break
    assert seen[-2:] == ["skip", "point"], seen  # a way past the map comes first
    expect(first).to_be_focused()
    expect(page.locator("#map-tip")).to_be_visible()
    expect(page.locator("#map-tip")).to_have_text(title)
    page.keyboard.press("Shift+Tab")  # back to "Skip the map"
    expect(page.locator("#map-tip")).to_be_hidden()
    page.keyboard.press("Enter")
    expect(page.locator("#after-map")).to_be_focused()


def test_typing_lights_up_matching_points_without_reloading(open_page, server):
    page = open_page()
    map_ = page.locator("svg.ragserver-map")
    page.locator("#explore-q").press_sequentially("enable WAL mode", delay=30)
    expect(page.locator(f"a.point.match[data-source='{WAL}']")).to_have_count(1)
    expect(map_).to_have_class(re.compile(r"\bfiltering\b"))
    with urllib.request.urlopen(f"{server}/api/search?q=enable+WAL+mode&n=20") as reply:
        want = {r["source"] for r in json.load(reply)["results"]}
    lit = page.locator("a.point.match")
    expect(lit).to_have_count(len(want))
    assert {p.get_attribute("data-source") for p in lit.all()} == want
    expect(page.locator("#explore-status")).to_have_text(f"{len(want)} posts match “enable WAL mode”.")
    assert len(page.loads) == 1, page.loads  # no page load: the map stayed
    expect(page).to_have_url(re.compile(r"/explore\?q=enable(\+|%20)WAL(\+|%20)mode$"))
    page.locator("#explore-q").fill("")
    expect(lit).to_have_count(0)
    expect(map_).not_to_have_class(re.compile(r"\bfiltering\b"))


def test_a_topic_link_lights_up_its_points_in_place(open_page):
    page = open_page()
    link = page.locator("a[data-show-topic]").nth(1)
    topic = link.get_attribute("data-show-topic")
    size = int(re.match(r"\d+", page.locator(f"#topic-{topic} .count").text_content()).group())
    link.click()
    lit = page.locator("a.point.match")
    expect(lit).to_have_count(size)
    assert {p.get_attribute("data-topic") for p in lit.all()} == {topic}
    expect(page.locator(f"#topic-{topic}")).to_have_class(re.compile(r"\bchosen\b"))
    expect(page).to_have_url(re.compile(rf"/explore\?topic={topic}$"))
    page.get_by_role("link", name="Show every topic").click()
    expect(lit).to_have_count(0)
    assert len(page.loads) == 1, page.loads


@pytest.mark.parametrize("path", ["/explore", "/explore?q=sqlite",
                                  "/explore?axis=concrete+how-to,abstract+essay"])
def test_a_phone_has_no_horizontal_scroll(open_page, path):
    page = open_page(path, viewport={"width": 375, "height": 812}, is_mobile=True,
                     has_touch=True, device_scale_factor=2)
    expect(page.locator("svg.ragserver-map")).to_be_visible()
    widths = page.evaluate("""() => ({page: document.documentElement.scrollWidth,
        map: document.querySelector('svg.ragserver-map').getBoundingClientRect().width})""")
    assert widths["page"] <= 375 and 300 <= widths["map"] <= 375, widths
