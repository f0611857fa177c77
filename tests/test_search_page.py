"""The /search page: a plain form without JavaScript, partial swaps for htmx, pagination."""

from __future__ import annotations

import re

import pytest


def result_links(html: str) -> list[str]:
    return re.findall(r'<a class="title" href="([^"]+)"', html)


def test_plain_form_search_shows_linked_highlighted_results(client):
    page = client.get("/search?q=enable+WAL+mode").get_data(as_text=True)
    assert '<form id="search" role="search" method="get" action="/search">' in page
    assert 'value="enable WAL mode"' in page
    links = result_links(page)
    assert links[0].startswith("https://til.example/sqlite/enabling-wal-mode")
    first = page[page.index('<li class="result">'):page.index("</li>")]
    assert "<mark>" in first.lower() and ">Enabling WAL mode for SQLite database files</a>" in first
    assert "Also in this post:" in first  # more matching passages of the same post, by heading


def test_htmx_request_gets_only_the_results(client):
    partial = client.get("/search?q=enable+WAL+mode", headers={"HX-Request": "true"})
    html = partial.get_data(as_text=True)
    assert partial.status_code == 200 and "<html" not in html and "<form" not in html
    assert result_links(html)[0].startswith("https://til.example/sqlite/enabling-wal-mode")


def test_pages_do_not_overlap(client):
    first = client.get("/search?q=sqlite").get_data(as_text=True)
    second = client.get("/search?q=sqlite&page=2").get_data(as_text=True)
    assert len(result_links(first)) == 10 and result_links(second)
    assert not set(result_links(first)) & set(result_links(second))
    assert 'href="/search?q=sqlite&amp;page=2"' in first and "Previous" not in first
    assert 'href="/search?q=sqlite&amp;page=1"' in second and '<ol class="results" start="11">' in second


def test_empty_query_shows_just_the_form(client):
    page = client.get("/search").get_data(as_text=True)
    assert '<input id="q" name="q" type="search" value=""' in page
    assert '<ol class="results"' not in page and "No posts match" not in page


def test_nothing_found_says_so(client):
    page = client.get("/search?q=zzzqqqxxj&mode=keyword").get_data(as_text=True)
    assert "No posts match “zzzqqqxxj”." in page


@pytest.mark.parametrize("query,message", [
    ("q=" + "x" * 2001, "2,000"), ("q=wal&page=0", "between 1 and 10"),
    ("q=wal&page=two", "whole number"), ("q=wal&mode=fuzzy", "mode must be one of"),
])
def test_bad_input_is_a_400_page_with_the_reason(client, query, message):
    for headers in ({}, {"HX-Request": "true"}):
        response = client.get(f"/search?{query}", headers=headers)
        html = response.get_data(as_text=True)
        assert response.status_code == 400 and message in html and 'role="alert"' in html


def test_query_is_escaped_everywhere(client):
    page = client.get("/search?q=%3Cscript%3Ealert(1)%3C/script%3E+wal").get_data(as_text=True)
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; wal" in page
