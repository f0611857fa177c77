"""Reading real posts from every kind of source, and refusing bad input clearly."""

from __future__ import annotations

import functools
import http.server
import io
import json
import threading
from email.utils import format_datetime
from datetime import datetime, timezone
from html import escape
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from conftest import CORPUS
from ragserver.ingest.formats.markdown import parse_markdown
from ragserver.ingest.formats.post import split_front_matter
from ragserver.ingest.sources import Document, SkipInput, Skipped, open_source, read_ndjson

WAL = CORPUS / "sqlite" / "enabling-wal-mode.md"
CTE = CORPUS / "sqlite" / "simple-recursive-cte.md"


def _read_all(spec, **kwargs):
    source = open_source(str(spec), **kwargs)
    items = list(source.read())
    return source, [i for i in items if isinstance(i, Document)], [i for i in items if isinstance(i, Skipped)]


def _body_without_title(path: Path) -> str:
    return path.read_text().split("\n", 1)[1]


def test_directory_gives_relative_source_ids_and_base_url(tmp_path):
    (tmp_path / "blog" / "sqlite").mkdir(parents=True)
    (tmp_path / "blog" / "sqlite" / "wal.md").write_text(WAL.read_text())
    (tmp_path / "blog" / "index.md").write_text(CTE.read_text())
    (tmp_path / "blog" / ".hidden.md").write_text(CTE.read_text())
    (tmp_path / "blog" / "notes.rst").write_text("not a post")
    source, docs, skipped = _read_all(tmp_path / "blog", base_url="https://blog.example/")
    assert source.kind == "directory" and source.listed and source.prunable
    assert {d.source: d.url for d in docs} == {
        "index.md": "https://blog.example/",
        "sqlite/wal.md": "https://blog.example/sqlite/wal",
    }
    assert skipped == []


def test_glob_source(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "wal.md").write_text(WAL.read_text())
    (tmp_path / "a" / "cte.markdown").write_text(CTE.read_text())
    source, docs, _ = _read_all(str(tmp_path / "a" / "*.md"))
    assert source.kind == "glob" and [d.source for d in docs] == ["wal.md"]


def test_front_matter_title_date_url_tags(tmp_path):
    front = ("---\ntitle: WAL mode, explained\ndate: 2024-03-01\nslug: sqlite/wal\n"
             "tags: [sqlite, performance]\n---\n")
    (tmp_path / "p.md").write_text(front + _body_without_title(WAL))
    _, [doc], _ = _read_all(tmp_path / "p.md", base_url="https://blog.example")
    assert doc.title == "WAL mode, explained"
    assert doc.date == "2024-03-01"
    assert doc.url == "https://blog.example/sqlite/wal"
    assert doc.tags == ("sqlite", "performance")
    (tmp_path / "q.md").write_text("---\nurl: https://elsewhere.example/wal/\n---\n" + WAL.read_text())
    _, [doc], _ = _read_all(tmp_path / "q.md", base_url="https://blog.example")
    assert doc.url == "https://elsewhere.example/wal/"
    assert doc.title == "Enabling WAL mode for SQLite database files"


def test_html_file_uses_article_and_drops_chrome(tmp_path):
    article = MarkdownIt("commonmark").render(WAL.read_text())
    page = ("<html><head><title>Enabling WAL mode | My TIL</title>"
            "<script>var tracking = 'SECRET-SCRIPT';</script><style>p{color:red}</style></head>"
            "<body><nav><a href='/'>Home NAVTEXT</a></nav>"
            f"<article>{article}</article><footer>FOOTERTEXT</footer></body></html>")
    (tmp_path / "wal.html").write_text(page)
    _, [doc], _ = _read_all(tmp_path / "wal.html")
    text = " ".join(b.text for b in doc.blocks)
    assert doc.title == "Enabling WAL mode for SQLite database files"  # the article's h1
    assert "PRAGMA journal_mode=WAL" in text
    for chrome in ("SECRET-SCRIPT", "NAVTEXT", "FOOTERTEXT", "color:red"):
        assert chrome not in text
    assert any(b.kind == "heading" and b.text == "Turning WAL mode off again" for b in doc.blocks)


def _rss(posts: list[Path]) -> str:
    md = MarkdownIt("commonmark")
    items = []
    for i, path in enumerate(posts):
        title, body = path.read_text().split("\n", 1)
        date = format_datetime(datetime(2024, 1, i + 1, tzinfo=timezone.utc))
        items.append(f"<item><title>{escape(title.lstrip('# '))}</title>"
                     f"<link>https://til.example/{path.stem}</link><pubDate>{date}</pubDate>"
                     f"<category>sqlite</category>"
                     f"<description>{escape(md.render(body))}</description></item>")
    return ('<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
            f"<title>TIL</title><link>https://til.example/</link>{''.join(items)}</channel></rss>")


def _atom(posts: list[Path]) -> str:
    md = MarkdownIt("commonmark")
    entries = []
    for path in posts:
        title, body = path.read_text().split("\n", 1)
        entries.append(f"<entry><title>{escape(title.lstrip('# '))}</title>"
                       f"<link href='https://til.example/{path.stem}'/>"
                       f"<id>tag:til.example,2024:{path.stem}</id><updated>2024-02-02T10:00:00Z</updated>"
                       f"<content type='html'>{escape(md.render(body))}</content></entry>")
    return ('<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
            f"<title>TIL</title><id>tag:til.example,2024:feed</id><updated>2024-02-02T10:00:00Z</updated>"
            f"{''.join(entries)}</feed>")


@pytest.mark.parametrize("make,name", [(_rss, "feed.xml"), (_atom, "feed.atom")])
def test_feed_files(tmp_path, make, name):
    (tmp_path / name).write_text(make([WAL, CTE]))
    source, docs, skipped = _read_all(tmp_path / name)
    assert source.kind == "feed" and not source.prunable and skipped == []
    assert [d.source for d in docs] == ["https://til.example/enabling-wal-mode",
                                        "https://til.example/simple-recursive-cte"]
    assert docs[0].title == "Enabling WAL mode for SQLite database files"
    assert docs[0].date.startswith("2024-")
    assert "PRAGMA journal_mode=WAL" in " ".join(b.text for b in docs[0].blocks)


def test_feed_over_http(tmp_path):
    (tmp_path / "feed.xml").write_text(_rss([WAL, CTE]))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        _, docs, skipped = _read_all(f"{base}/feed.xml")
        assert len(docs) == 2 and skipped == []
        _, docs, skipped = _read_all(f"{base}/missing.xml")
        assert docs == [] and "404" in skipped[0].reason
    finally:
        server.shutdown()


def test_ndjson_stdin():
    lines = [
        json.dumps({"id": "wal", "title": "WAL", "url": "https://til.example/wal",
                    "content": _body_without_title(WAL), "date": "2024-01-01"}),
        json.dumps({"id": "cte", "content": CTE.read_text()}),
        "",
        "{not json",
        json.dumps({"title": "no id", "content": "text"}),
        json.dumps({"id": "empty", "content": "  "}),
        json.dumps(["a list"]),
    ]
    items = list(read_ndjson(io.StringIO("\n".join(lines) + "\n"), 1_000_000))
    docs = [i for i in items if isinstance(i, Document)]
    skipped = [i for i in items if isinstance(i, Skipped)]
    assert [(d.source, d.title) for d in docs] == [("wal", "WAL"), ("cte", "The simplest recursive CTE")]
    assert docs[0].url == "https://til.example/wal" and docs[0].date == "2024-01-01"
    assert [s.name for s in skipped] == ["stdin line 4", "stdin line 5", "stdin line 6", "stdin line 7"]
    assert "not JSON" in skipped[0].reason and "missing id" in skipped[1].reason


def test_ndjson_lone_surrogate_in_html_is_skipped_not_a_crash():
    """JSON can escape half a surrogate pair; short HTML without tags once crashed the parser."""
    lines = [json.dumps({"id": "short", "format": "html", "content": "caf\udce9"}),
             json.dumps({"id": "tagged", "format": "html", "content": "<p>caf\udce9</p>"}),
             json.dumps({"id": "markdown", "content": "caf\udce9"})]
    items = list(read_ndjson(io.StringIO("\n".join(lines) + "\n"), 1_000_000))
    assert [(i.source, i.reason) for i in items] == [
        (source, "not Unicode text: an unpaired \\ud800-\\udfff escape")
        for source in ("short", "tagged", "markdown")]


def test_bad_files_are_skipped_with_reasons(tmp_path):
    d = tmp_path / "posts"
    d.mkdir()
    (d / "good.md").write_text(WAL.read_text())
    (d / "binary.md").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 10)
    (d / "latin1.md").write_bytes("# Caf\xe9\n\nna\xefve text\n".encode("latin-1"))
    (d / "empty.md").write_text("  \n\n")
    (d / "title-only.md").write_text("# Just a title\n")
    (d / "huge.md").write_text("# Big\n\n" + "word " * 300_000)
    (d / "bad-yaml.md").write_text("---\ntitle: [unclosed\n---\n" + WAL.read_text())
    (d / "unclosed.md").write_text("---\ntitle: x\n" + WAL.read_text())
    (d / "dangling.md").symlink_to(tmp_path / "nowhere.md")
    source, docs, skipped = _read_all(d, max_bytes=1_000_000)
    assert [doc.source for doc in docs] == ["good.md"]
    reasons = {Path(s.name).name: s.reason for s in skipped}
    assert reasons["binary.md"] == "binary file"
    assert reasons["latin1.md"].startswith("not UTF-8")
    assert reasons["empty.md"] == "empty"
    assert reasons["title-only.md"].startswith("empty")
    assert reasons["huge.md"].startswith("too large")
    assert reasons["bad-yaml.md"].startswith("malformed front matter")
    assert reasons["unclosed.md"] == "malformed front matter: no closing --- line"
    assert reasons["dangling.md"].startswith("unreadable")
    # Every skipped file still names its post id, so pruning never deletes it.
    assert {s.source for s in skipped} == {p.name for p in d.iterdir()} - {"good.md"}
    assert source.listed


def test_malformed_feed_is_skipped(tmp_path):
    feed = _rss([WAL, CTE])
    (tmp_path / "broken.xml").write_text(feed[: len(feed) // 2])
    _, docs, skipped = _read_all(tmp_path / "broken.xml")
    assert docs == [] and skipped[0].reason.startswith("malformed feed")


def test_unknown_source_is_refused():
    with pytest.raises(SkipInput, match="no such file"):
        open_source("/definitely/not/here")


def test_markdown_html_block_and_entities():
    doc = parse_markdown("# T\n\n<div class='note'>Raw <b>HTML</b> note</div>\n\nA &amp; B\n",
                         source="t.md")
    assert [b.text for b in doc.blocks] == ["Raw HTML note", "A & B"]


def test_front_matter_aliases_are_refused_not_expanded():
    """Nested YAML aliases would expand to gigabytes when a title becomes text."""
    bomb = ("---\na: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
            "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
            "title: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n---\nBody text.\n")
    with pytest.raises(SkipInput, match="aliases .* are not allowed"):
        split_front_matter(bomb)
