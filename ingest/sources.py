"""Read posts from folders, globs, files, feeds and NDJSON into Documents.

Every reader yields `Document`s and `Skipped` notes: a bad file never stops the
others. A source that can list its posts completely (a folder or glob) says so,
which is what makes pruning deleted posts safe. What a post's text means is the
business of its format (ingest/formats/), looked up by file suffix, media type or name.
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import os
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

from .formats import FORMATS, format_for_media_type, format_for_path, format_named
from .records import Document, SkipInput

FEED_SUFFIXES = {".xml", ".rss", ".atom", ".feed"}
USER_AGENT = "ragserver (+feed ingest)"


@dataclass(frozen=True)
class Skipped:
    name: str  # file, URL or "stdin line N": what a person needs to find it
    reason: str
    source: str | None = None  # the post id it would have had, so pruning spares it


@dataclass
class Source:
    """One SOURCE argument of `ragserver ingest`."""

    spec: str
    origin: str
    kind: str  # directory, glob, file, feed, stdin
    base_url: str = ""
    max_bytes: int = 5_000_000
    stdin: IO | None = None
    listed: bool = field(default=False, init=False)  # True once every post was enumerated

    @property
    def prunable(self) -> bool:
        """Whether posts missing from this source may be deleted (complete listings only)."""
        return self.kind in ("directory", "glob")

    def read(self) -> Iterator[Document | Skipped]:
        """Documents and skip notes, in a stable order."""
        if self.kind in ("directory", "glob"):
            yield from self._read_files()
        elif self.kind == "file":
            path = Path(self.spec)
            yield from _read_one(path, path.name, self.base_url, self.max_bytes)
        elif self.kind == "feed":
            yield from _read_feed(self.spec, self.max_bytes)
        elif self.kind == "stdin":
            yield from read_ndjson(self.stdin or sys.stdin, self.max_bytes)

    def _read_files(self) -> Iterator[Document | Skipped]:
        try:
            root, paths = _list_files(self.spec, self.kind)
        except OSError as error:
            yield Skipped(self.spec, f"cannot list: {error.strerror or error}")
            return
        for path in paths:
            yield from _read_one(path, path.relative_to(root).as_posix(), self.base_url,
                                 self.max_bytes)
        self.listed = True


def open_source(spec: str, *, base_url: str = "", max_bytes: int = 5_000_000,
                stdin: IO | None = None) -> Source:
    """Work out what kind of source a SOURCE argument names; raise SkipInput if none."""
    common = dict(base_url=base_url, max_bytes=max_bytes)
    if spec == "-":
        return Source(spec, "stdin", "stdin", stdin=stdin, **common)
    if spec.startswith(("http://", "https://")):
        return Source(spec, spec, "feed", **common)
    path = Path(spec).expanduser()
    if path.is_dir():
        return Source(str(path), str(path.resolve()), "directory", **common)
    if path.is_file():
        post_format = format_for_path(path)
        if path.suffix.lower() in FEED_SUFFIXES or (post_format is None
                                                    and _looks_like_feed(path)):
            return Source(str(path), str(path.resolve()), "feed", **common)
        if post_format is not None:
            return Source(str(path), str(path.resolve()), "file", **common)
        labels = ", ".join(f.label for f in FORMATS)
        raise SkipInput(f"{spec}: not a {labels} or feed file")
    if glob.has_magic(spec):
        return Source(spec, "glob:" + os.path.abspath(os.path.expanduser(spec)), "glob", **common)
    raise SkipInput(f"{spec}: no such file, folder or glob match")


def _looks_like_feed(path: Path) -> bool:
    try:
        head = path.open("rb").read(512).lstrip().lower()
    except OSError:
        return False
    return head.startswith(b"<?xml") or head.startswith((b"<rss", b"<feed", b"<rdf"))


def _list_files(spec: str, kind: str) -> tuple[Path, list[Path]]:
    if kind == "directory":
        root = Path(spec)
        if not root.is_dir():
            raise NotADirectoryError(2, "not a folder any more", spec)
        paths = []
        for folder, dirs, files in os.walk(root, onerror=_raise):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            paths.extend(Path(folder) / f for f in sorted(files)
                         if not f.startswith(".") and format_for_path(f) is not None)
        return root, paths
    pattern = os.path.expanduser(spec)
    root = Path(_glob_root(pattern))
    paths = sorted(Path(p) for p in glob.glob(pattern, recursive=True)
                   if Path(p).is_file() and format_for_path(p) is not None)
    return root, paths


def _raise(error: OSError):
    raise error


def _glob_root(pattern: str) -> str:
    """The folder part of a glob before its first wildcard."""
    parts = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return str(Path(*parts)) if parts else "."


# -- files ------------------------------------------------------------------

def read_text(path: Path, max_bytes: int) -> str:
    """A file's text, or SkipInput for unreadable, enormous, binary, non-UTF-8 or empty files."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise SkipInput(f"too large ({size:,} bytes; limit {max_bytes:,}, "
                            "RAGSERVER_MAX_FILE_BYTES)")
        data = path.read_bytes()
    except OSError as error:
        raise SkipInput(f"unreadable: {error.strerror or error}") from None
    return decode_text(data)


def decode_text(data: bytes) -> str:
    """UTF-8 text from bytes, or SkipInput for binary, non-UTF-8 or empty content."""
    if b"\x00" in data[:8192]:
        raise SkipInput("binary file")
    try:
        # Not "utf-8-sig": after a byte-order mark it counts error offsets from the 4th byte.
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        raise SkipInput(f"not UTF-8 (byte {error.start}: {data[error.start:error.start + 1]!r})") from None
    if not text.strip():
        raise SkipInput("empty")
    return text


def _read_one(path: Path, source: str, base_url: str, max_bytes: int) -> Iterator[Document | Skipped]:
    try:
        text = read_text(path, max_bytes)
        doc = format_for_path(path).parse(text, source=source, base_url=base_url)
    except SkipInput as skip:
        yield Skipped(str(path), str(skip), source)
        return
    yield doc


# -- feeds ------------------------------------------------------------------

def _fetch(url: str, max_bytes: int) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            data = response.read(max_bytes + 1)
    except Exception as error:  # URLError, HTTPError, timeouts, bad URLs
        raise SkipInput(f"cannot fetch: {error}") from None
    if len(data) > max_bytes:
        raise SkipInput(f"feed larger than {max_bytes:,} bytes (RAGSERVER_MAX_FILE_BYTES)")
    return data


def _read_feed(spec: str, max_bytes: int) -> Iterator[Document | Skipped]:
    import feedparser

    try:
        if spec.startswith(("http://", "https://")):
            data = _fetch(spec, max_bytes)
        else:
            path = Path(spec)
            size = path.stat().st_size
            if size > max_bytes:
                raise SkipInput(f"too large ({size:,} bytes; limit {max_bytes:,})")
            data = path.read_bytes()
    except OSError as error:
        yield Skipped(spec, f"unreadable: {error.strerror or error}")
        return
    except SkipInput as skip:
        yield Skipped(spec, str(skip))
        return
    feed = feedparser.parse(data, sanitize_html=False, resolve_relative_uris=False)
    harmless = (feedparser.CharacterEncodingOverride, feedparser.NonXMLContentType)
    if feed.bozo and not isinstance(feed.bozo_exception, harmless):
        yield Skipped(spec, f"malformed feed: {feed.bozo_exception}")
        return
    if not feed.entries and not feed.feed:
        yield Skipped(spec, "not an RSS or Atom feed")
        return
    for number, entry in enumerate(feed.entries, 1):
        link = entry.get("link") or entry.get("id")
        name = f"{spec} entry {number}"
        if not link:
            yield Skipped(name, "entry has no link or id")
            continue
        content, media_type = _entry_content(entry)
        if len(content.encode("utf-8")) > max_bytes:
            yield Skipped(name, f"entry larger than {max_bytes:,} bytes", link)
            continue
        parsed = entry.get("published_parsed") or entry.get("updated_parsed")
        date = dt.datetime(*parsed[:6], tzinfo=dt.timezone.utc).isoformat() if parsed else None
        tags = [t.get("term") for t in entry.get("tags", []) if t.get("term")]
        # Without a type it is HTML: RSS descriptions are.
        post_format = format_for_media_type(media_type) or format_for_media_type("text/html")
        try:
            yield post_format.parse(content, source=link, url=entry.get("link", ""),
                                    title=entry.get("title", ""), date=date, tags=tags)
        except SkipInput as skip:
            yield Skipped(name, str(skip), link)


def _entry_content(entry) -> tuple[str, str]:
    """An entry's content, else its summary, and the media type feedparser gives it."""
    for item in entry.get("content", []) or []:
        if item.get("value"):
            return item["value"], item.get("type") or ""
    detail = entry.get("summary_detail") or {}
    return entry.get("summary", "") or "", detail.get("type") or ""


# -- NDJSON -----------------------------------------------------------------

def read_ndjson(stream: IO, max_bytes: int) -> Iterator[Document | Skipped]:
    """Posts as JSON objects, one per line: id, content, and optionally title/url/date/tags
    and the content's format (Markdown unless it names another)."""
    for number, raw in enumerate(stream, 1):
        name = f"stdin line {number}"
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield Skipped(name, "not UTF-8")
                continue
        if not raw.strip():
            continue
        if len(raw.encode("utf-8", "surrogatepass")) > max_bytes:
            yield Skipped(name, f"line larger than {max_bytes:,} bytes")
            continue
        try:
            item = json.loads(raw)
        except json.JSONDecodeError as error:
            yield Skipped(name, f"not JSON: {error.msg} at column {error.colno}")
            continue
        except (ValueError, RecursionError) as error:
            # JSON that Python refuses: integers over 4300 digits, nesting past the stack.
            yield Skipped(name, f"unusable JSON: {error}")
            continue
        if not isinstance(item, dict):
            yield Skipped(name, "expected a JSON object with id and content")
            continue
        source = item.get("id")
        if source is None or str(source).strip() == "":
            yield Skipped(name, "missing id")
            continue
        source = str(source)
        content = item.get("content")
        if not isinstance(content, str) or not content.strip():
            yield Skipped(name, "missing or empty content", source)
            continue
        post_format = format_named(item.get("format")) or format_named("markdown")
        try:
            doc = post_format.parse(content, source=source, url=str(item.get("url") or ""),
                                    title=str(item.get("title") or ""), date=item.get("date"),
                                    tags=item.get("tags"))
        except SkipInput as skip:
            yield Skipped(name, str(skip), source)
            continue
        if not _is_unicode(doc):
            yield Skipped(name, "not Unicode text: an unpaired \\ud800-\\udfff escape", source)
            continue
        yield doc


def _is_unicode(doc: Document) -> bool:
    """Whether every text of a document can be stored as UTF-8 (no lone surrogates)."""
    texts = [doc.source, doc.title, doc.url, doc.date or "", *doc.tags,
             *(b.text for b in doc.blocks), *(b.anchor for b in doc.blocks)]
    try:
        "".join(texts).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
