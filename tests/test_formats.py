"""The table of post formats: which files are read, and which parser reads each post."""

from __future__ import annotations

import io
import json
from html import escape

import pytest
from markdown_it import MarkdownIt

from conftest import CORPUS
from ingest.formats import FORMATS, format_for_media_type, format_for_path, format_named
from ingest.formats.html import parse_html
from ingest.formats.markdown import parse_markdown
from ingest.sources import FEED_SUFFIXES, Document, SkipInput, Skipped, open_source, read_ndjson

WAL = CORPUS / "sqlite" / "enabling-wal-mode.md"
CTE = CORPUS / "sqlite" / "simple-recursive-cte.md"


def _read_all(spec, **kwargs):
    items = list(open_source(str(spec), **kwargs).read())
    return [i for i in items if isinstance(i, Document)], [i for i in items if isinstance(i, Skipped)]


def test_table_rows_do_not_overlap():
    """A suffix, media type or name picks one format, and no post suffix is a feed's."""
    suffixes = [s for f in FORMATS for s in f.suffixes]
    media_types = [m for f in FORMATS for m in f.media_types]
    assert len(set(suffixes)) == len(suffixes) and len(set(media_types)) == len(media_types)
    assert len({f.name for f in FORMATS}) == len(FORMATS)
    assert all(s.startswith(".") and s == s.lower() for s in suffixes)
    assert not set(suffixes) & FEED_SUFFIXES
    for f in FORMATS:
        assert format_named(f.name) is f
        assert all(format_for_path(f"post{s}") is f for s in f.suffixes)
        assert all(format_for_media_type(m) is f for m in f.media_types)


def test_folders_and_globs_read_exactly_the_suffixes_of_the_table(tmp_path):
    posts = tmp_path / "posts"
    (posts / "sub").mkdir(parents=True)
    wanted = set()
    for f in FORMATS:
        for number, suffix in enumerate(f.suffixes):
            name = f"sub/{f.name}-{number}{suffix}"
            (posts / name).write_text(WAL.read_text())
            wanted.add(name)
    (posts / "LOUD.MD").write_text(CTE.read_text())  # suffixes match in any case
    wanted.add("LOUD.MD")
    for name in ("notes.rst", "notes.org", "data.json", "README", "feed.xml", "script.py"):
        (posts / name).write_text(CTE.read_text())
    (posts / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    docs, skipped = _read_all(posts)
    assert {d.source for d in docs} == wanted and skipped == []
    docs, skipped = _read_all(str(posts / "**" / "*"))
    assert {d.source for d in docs} == wanted and skipped == []


def test_each_suffix_reaches_the_parser_of_its_row(tmp_path):
    article = MarkdownIt("commonmark").render(WAL.read_text())
    for f in FORMATS:
        for suffix in f.suffixes:
            text = f"<article>{article}</article>" if f.name == "html" else WAL.read_text()
            (tmp_path / f"wal{suffix}").write_text(text)
            [doc], _ = _read_all(tmp_path / f"wal{suffix}", base_url="https://til.example/")
            assert doc == f.parse(text, source=f"wal{suffix}", base_url="https://til.example/")
            assert doc.url == "https://til.example/wal"


def test_a_file_of_no_format_is_refused_naming_the_formats(tmp_path):
    (tmp_path / "notes.rst").write_text(CTE.read_text())
    labels = ", ".join(f.label for f in FORMATS)
    with pytest.raises(SkipInput, match=f"not a {labels} or feed file"):
        open_source(str(tmp_path / "notes.rst"))


def _atom_entry(name: str, content_type: str, body: str) -> str:
    return (f"<entry><title>{name}</title><link href='https://til.example/{name}'/>"
            f"<id>tag:til.example,2024:{name}</id><updated>2024-02-02T10:00:00Z</updated>"
            f"<content type='{content_type}'>{escape(body)}</content></entry>")


def test_feed_entries_reach_the_parser_of_their_media_type(tmp_path):
    markdown = WAL.read_text()
    html = MarkdownIt("commonmark").render(CTE.read_text())
    entries = [_atom_entry("md", "text/markdown", markdown), _atom_entry("html", "html", html),
               _atom_entry("other", "application/x-unknown", html)]
    (tmp_path / "feed.atom").write_text(
        '<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
        "<title>TIL</title><id>tag:til.example,2024:feed</id>"
        f"<updated>2024-02-02T10:00:00Z</updated>{''.join(entries)}</feed>")
    docs, skipped = _read_all(tmp_path / "feed.atom")
    assert skipped == []
    by_name = {d.source.rsplit("/", 1)[-1]: d for d in docs}
    assert by_name["md"].blocks == parse_markdown(markdown, source="md", title="md").blocks
    assert any(b.kind == "code" for b in by_name["md"].blocks)  # not one HTML text lump
    assert by_name["html"].blocks == parse_html(html, source="html", title="html").blocks
    # A type no row claims is read as HTML, as RSS descriptions without a type are.
    assert by_name["other"].blocks == by_name["html"].blocks


def test_ndjson_lines_reach_the_parser_their_format_names():
    markdown = WAL.read_text()
    html = MarkdownIt("commonmark").render(CTE.read_text())
    lines = [{"id": "md", "content": markdown}, {"id": "md2", "content": markdown,
                                                 "format": "markdown"},
             {"id": "html", "content": html, "format": "html"},
             {"id": "unknown", "content": markdown, "format": "rst"},
             {"id": "odd", "content": markdown, "format": ["html"]}]
    stream = io.StringIO("".join(json.dumps(line) + "\n" for line in lines))
    docs = {d.source: d for d in read_ndjson(stream, 1_000_000)}
    assert set(docs) == {"md", "md2", "html", "unknown", "odd"}
    expected = parse_markdown(markdown, source="md").blocks
    assert docs["md"].blocks == docs["md2"].blocks == expected
    # Markdown is the default for a missing, unknown or malformed format.
    assert docs["unknown"].blocks == docs["odd"].blocks == expected
    assert docs["html"].blocks == parse_html(html, source="html").blocks
