"""The table of post formats: which files are read, which parser reads each post, and
plain-text posts made from real ones."""

from __future__ import annotations

import io
import json
import textwrap
from html import escape

import pytest
from markdown_it import MarkdownIt

from conftest import CORPUS, corpus_posts
from ragserver.ingest.formats import FORMATS, format_for_media_type, format_for_path, format_named
from ragserver.ingest.formats.html import parse_html
from ragserver.ingest.formats.markdown import markdown_blocks, parse_markdown
from ragserver.ingest.formats.text import parse_text, text_blocks
from ragserver.ingest.records import Block
from ragserver.ingest.sources import FEED_SUFFIXES, Document, SkipInput, Skipped, open_source, read_ndjson

WAL = CORPUS / "sqlite" / "enabling-wal-mode.md"
CTE = CORPUS / "sqlite" / "simple-recursive-cte.md"


def _read_all(spec, **kwargs):
    items = list(open_source(str(spec), **kwargs).read())
    return ([i for i in items if isinstance(i, Document)],
            [i for i in items if isinstance(i, Skipped)])


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


# -- plain text -----------------------------------------------------------------

def _fill(text: str, **kwargs) -> str:
    return textwrap.fill(" ".join(text.split()), 72, break_on_hyphens=False,
                         break_long_words=False, **kwargs)


def _as_plain_text(path, *, underline_title: bool = True) -> tuple[str, list[Block]]:
    """A real post written out as plain text, and the blocks that text must give.

    Paragraphs and quotes are hard-wrapped at 72 columns, headings underlined, list items
    start with "- " and hang their wrapped lines, code and tables are indented.
    """
    parts, expected = [], []
    for block in markdown_blocks(path.read_text()):
        words = " ".join(block.text.split())
        if block.kind == "heading":
            level = 1 if block.level == 1 else 2
            underline = "\n" + ("=" if level == 1 else "-") * max(3, len(block.text))
            if level == 1 and not parts and not underline_title:
                underline = ""  # a first line followed by a blank line is the title too
            parts.append(block.text + underline)
            expected.append(Block("heading", block.text, level=level))
        elif block.kind in ("paragraph", "quote"):
            parts.append(_fill(words))
            expected.append(Block("paragraph", words))
        elif block.kind == "list_item":
            parts.append(_fill(words, initial_indent="- ", subsequent_indent="  "))
            expected.append(Block("list_item", words))
        else:
            lines = block.text.split("\n")[1:-1] if block.kind == "code" else block.text.split("\n")
            code = "\n".join(line if line.strip() else "" for line in lines).strip("\n")
            parts.append("\n".join("    " + line if line else "" for line in code.split("\n")))
            if expected and expected[-1].kind == "code":
                # Indented code with only blank lines between is one block in plain text.
                code = expected[-1].text.removeprefix("```\n").removesuffix("\n```") + "\n\n" + code
                expected.pop()
            expected.append(Block("code", f"```\n{code}\n```"))
    return "\n\n".join(parts) + "\n", expected


def test_real_posts_as_plain_text_keep_their_blocks():
    """All 282 posts: wrapped paragraphs, underlined headings, lists and code come back whole."""
    for path in corpus_posts():
        text, expected = _as_plain_text(path)
        assert text_blocks(text) == expected, path.relative_to(CORPUS)


def test_folder_ingest_reads_a_txt_post(tmp_path):
    text, expected = _as_plain_text(WAL, underline_title=False)
    assert text.startswith("Enabling WAL mode for SQLite database files\n\nI was getting")
    (tmp_path / "posts" / "sqlite").mkdir(parents=True)
    (tmp_path / "posts" / "sqlite" / "wal.txt").write_text(text)
    (tmp_path / "posts" / "cte.md").write_text(CTE.read_text())
    docs, skipped = _read_all(tmp_path / "posts", base_url="https://til.example/")
    assert skipped == [] and [d.source for d in docs] == ["cte.md", "sqlite/wal.txt"]
    assert docs[1] == Document(source="sqlite/wal.txt",
                               title="Enabling WAL mode for SQLite database files",
                               url="https://til.example/sqlite/wal", date=None, tags=(),
                               blocks=tuple(expected[1:]))
    paragraph = docs[1].blocks[0]
    assert paragraph.kind == "paragraph" and paragraph.text.startswith(
        "I was getting occasional `Error: database is locked` messages from a Datasette "
        "instance that was running against a bunch of different SQLite files")
    assert Block("code", "```\nsqlite3 github.db 'PRAGMA journal_mode=WAL;'\n```") in docs[1].blocks
    assert Block("code", "```\nls *.db | while read filename;\n  do sqlite3 $filename "
                 "'PRAGMA journal_mode=WAL;';\ndone;\n```") in docs[1].blocks
    assert Block("heading", "Turning WAL mode off again", level=2) in docs[1].blocks


def test_txt_front_matter_gives_title_date_url_and_tags():
    text, expected = _as_plain_text(WAL, underline_title=False)
    front = ("---\ntitle: WAL mode, explained\ndate: 2024-03-01\nslug: sqlite/wal\n"
             "tags: [sqlite, performance]\n---\n")
    doc = parse_text(front + text, source="wal.txt", base_url="https://blog.example")
    assert (doc.title, doc.date, doc.url, doc.tags) == (
        "WAL mode, explained", "2024-03-01", "https://blog.example/sqlite/wal",
        ("sqlite", "performance"))
    assert list(doc.blocks) == expected  # the first line is no longer the title: a heading
    # A first line that repeats the front matter's title is not kept twice.
    same = parse_text("---\ntitle: Enabling WAL mode for SQLite database files\n---\n" + text,
                      source="wal.txt")
    assert list(same.blocks) == expected[1:]


def test_txt_title_falls_back_to_the_file_name():
    text, _ = _as_plain_text(WAL)
    body = text.split("\n\n", 1)[1]  # no title line: the text starts with a wrapped paragraph
    doc = parse_text(body, source="notes/wal-mode_notes.txt")
    assert doc.title == "Wal mode notes"
    assert doc.blocks[0].kind == "paragraph" and doc.blocks[0].text.startswith("I was getting")
    # A single line, however short, is the post itself, not a title over nothing.
    doc = parse_text("This means that turning on WAL is a thing you can do directly to a "
                     "database file!\n", source="wal.txt")
    assert doc.title == "Wal" and [b.kind for b in doc.blocks] == ["paragraph"]
    # A one-line paragraph longer than a title can be is not taken for one.
    long_line = " ".join(markdown_blocks(WAL.read_text())[1].text.split())
    doc = parse_text(f"{long_line}\n\nSo far so good.\n", source="wal.txt")
    assert doc.title == "Wal" and doc.blocks[0] == Block("paragraph", long_line)


def test_txt_capital_headings_rules_lists_and_wrapped_dashes():
    text, _ = _as_plain_text(WAL)
    text = text.replace("Turning WAL mode off again\n--------------------------",
                        "TURNING WAL MODE OFF AGAIN")
    text += "\n* * *\n\n`2022-03-05T14:35:00Z`\n\nSEE ALSO\n"
    blocks = text_blocks(text)
    assert Block("heading", "TURNING WAL MODE OFF AGAIN", level=2) in blocks
    # A timestamp has capitals but is no heading; a capital line with nothing after is text.
    assert blocks[-2:] == [Block("paragraph", "`2022-03-05T14:35:00Z`"),
                           Block("paragraph", "SEE ALSO")]
    assert not any("* * *" in b.text for b in blocks)
    # Prose wrapped just before a dash stays one paragraph; a block of items is a list.
    vim = next(b.text for b in markdown_blocks((CORPUS / "vim" / "mouse-support-in-vim.md")
                                               .read_text()) if "TUIs" in b.text)
    wrapped = vim.replace(" - ", "\n- ")
    assert wrapped.count("\n- ") == 2
    items = "- Turning WAL mode off again\n- Using sqlite-utils\n  - enable-wal\n- Futher notes"
    assert text_blocks(f"{wrapped}\n\n{items}\n") == [
        Block("paragraph", vim), Block("list_item", "Turning WAL mode off again"),
        Block("list_item", "Using sqlite-utils - enable-wal"),
        Block("list_item", "Futher notes")]


def test_bad_txt_files_are_skipped_with_reasons(tmp_path):
    text, _ = _as_plain_text(WAL)
    d = tmp_path / "posts"
    d.mkdir()
    (d / "good.txt").write_text(text)
    (d / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 10)
    (d / "latin1.txt").write_bytes("Caf\xe9\n\nna\xefve text\n".encode("latin-1"))
    (d / "empty.txt").write_text("  \n\n")
    (d / "title-only.txt").write_text("Just a title\n============\n")
    (d / "huge.txt").write_text(text * (1_000_000 // len(text) + 1))
    (d / "bad-yaml.txt").write_text("---\ntitle: [unclosed\n---\n" + text)
    docs, skipped = _read_all(d, max_bytes=1_000_000)
    assert [doc.source for doc in docs] == ["good.txt"]
    # Every skipped file names its post id, so pruning never deletes it.
    reasons = {s.source: s.reason for s in skipped}
    assert set(reasons) == {p.name for p in d.iterdir()} - {"good.txt"}
    assert reasons["binary.txt"] == "binary file"
    assert reasons["empty.txt"] == "empty"
    assert reasons["title-only.txt"] == "empty: no text besides the title"
    assert reasons["latin1.txt"].startswith("not UTF-8")
    assert reasons["huge.txt"].startswith("too large")
    assert reasons["bad-yaml.txt"].startswith("malformed front matter")


def test_atom_entries_of_type_text_reach_the_text_parser(tmp_path):
    text, _ = _as_plain_text(CTE)
    body = text.split("\n\n", 1)[1]  # the entry's title is the post's
    # Plain text as the feed says: link syntax is text here, not a link to reduce to "Dogsheep".
    summary = WAL.read_text().split("\n\n")[1]
    assert "[Dogsheep](https://dogsheep.github.io/)" in summary
    (tmp_path / "feed.atom").write_text(
        '<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
        "<title>TIL</title><id>tag:til.example,2024:feed</id>"
        "<updated>2024-02-02T10:00:00Z</updated>"
        + _atom_entry("cte", "text", body)
        + "<entry><title>wal</title><link href='https://til.example/wal'/><id>wal</id>"
        f"<updated>2024-02-02T10:00:00Z</updated><summary>{escape(summary)}</summary></entry>"
        "</feed>")
    (cte, wal), skipped = _read_all(tmp_path / "feed.atom")
    assert skipped == []
    assert cte.blocks == parse_text(body, source="cte", title="cte").blocks
    assert any(b.kind == "code" and "with recursive counter(x) as (" in b.text
               for b in cte.blocks)
    assert wal.blocks == (Block("paragraph", summary),)  # a summary has no type: text


def test_ndjson_line_of_format_text_reaches_the_text_parser():
    text, _ = _as_plain_text(WAL, underline_title=False)
    line = json.dumps({"id": "wal", "format": "text", "content": text})
    [doc] = read_ndjson(io.StringIO(line + "\n"), 1_000_000)
    assert doc == parse_text(text, source="wal")
    assert doc.title == "Enabling WAL mode for SQLite database files"
