"""What every format shares: front matter, and a post's title, URL, date and tags."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Callable
from urllib.parse import urljoin

from ..records import Block, Document, SkipInput


def read_post(text: str, blocks_of: Callable[[str], list[Block]], *, source: str,
              base_url: str = "", url: str = "", title: str = "", date=None,
              tags=None) -> Document:
    """A post of optional YAML front matter and a body that blocks_of splits, as a Document."""
    meta, body = split_front_matter(text)
    title, blocks = choose_title(str(meta.get("title") or title or ""), blocks_of(body), source)
    url = str(meta.get("url") or url or "")
    try:
        if url and base_url:
            url = urljoin(base_url.rstrip("/") + "/", url)
        elif not url and meta.get("slug") and base_url:
            url = urljoin(base_url.rstrip("/") + "/", str(meta["slug"]).lstrip("/"))
        elif not url:
            url = file_url(base_url, source)
    except ValueError as error:  # urljoin refuses e.g. "http://[x" (a bad IPv6 host)
        raise SkipInput(f"malformed url: {error}") from None
    return make_document(source=source, title=title, url=url, date=meta.get("date", date),
                         tags=meta.get("tags", tags), blocks=blocks)


def make_document(*, source: str, title: str, url: str, date, tags,
                  blocks: list[Block]) -> Document:
    """A Document with its date and tags as text, or SkipInput if it holds only headings."""
    if not any(b.kind != "heading" for b in blocks):
        raise SkipInput("empty: no text besides the title")
    return Document(source=source, title=title, url=url, date=_as_date(date),
                    tags=_as_tags(tags), blocks=tuple(blocks))


def split_front_matter(text: str) -> tuple[dict, str]:
    """YAML front matter (between --- lines at the very top) and the body after it."""
    lines = text.split("\n")
    if not lines or lines[0].rstrip() != "---":
        return {}, text
    for index in range(1, len(lines)):
        if lines[index].rstrip() in ("---", "..."):
            import yaml

            try:
                meta = yaml.load("\n".join(lines[1:index]), Loader=_front_matter_loader()) or {}
            except yaml.YAMLError as error:
                mark = getattr(error, "problem_mark", None)
                where = f" at line {mark.line + 2}" if mark else ""
                raise SkipInput(f"malformed front matter{where}: "
                                f"{getattr(error, 'problem', None) or error}") from None
            except Exception as error:
                # PyYAML lets plain errors out for some values (date: 2024-02-30, !!int x,
                # !!timestamp x, 5000-digit numbers), and deep [[[[ nesting exhausts the stack.
                raise SkipInput(f"malformed front matter: {error}") from None
            if not isinstance(meta, dict):
                raise SkipInput("malformed front matter: expected key: value pairs")
            return meta, "\n".join(lines[index + 1:])
    raise SkipInput("malformed front matter: no closing --- line")


def _front_matter_loader():
    """yaml.SafeLoader without aliases: front matter never needs them, and nested aliases
    ("billion laughs") expand to gigabytes when a title or tags are turned into text."""
    import yaml

    class FrontMatterLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed",
                                                  event.start_mark)
            return super().compose_node(parent, index)

    return FrontMatterLoader


def choose_title(title: str, blocks: list[Block], source: str) -> tuple[str, list[Block]]:
    """The given title, else a leading H1, else the file name; an H1 repeating it is dropped."""
    h1, rest = take_title(blocks)
    title = title.strip()
    if not title:
        return (h1, rest) if h1 else (title_from_source(source), blocks)
    if h1 and h1.strip().lower() == title.lower():
        return title, rest
    return title, blocks


def take_title(blocks: list[Block]) -> tuple[str | None, list[Block]]:
    """Split off a leading H1 as the title (only if it comes before any content)."""
    for index, block in enumerate(blocks):
        if block.kind == "heading" and block.level == 1:
            return block.text, blocks[:index] + blocks[index + 1:]
        if block.kind != "heading":
            break
    return None, blocks


def title_from_source(source: str) -> str:
    """A title made from a file name: "wal-mode.md" is "Wal mode"."""
    name = Path(source.rstrip("/")).name or source
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return stem.replace("-", " ").replace("_", " ").strip().capitalize() or source


def file_url(base_url: str, source: str) -> str:
    """base URL + path without extension; index files map to their folder."""
    if not base_url:
        return ""
    stem = source.rsplit(".", 1)[0] if "." in Path(source).name else source
    if stem == "index" or stem.endswith("/index"):
        stem = stem[: -len("index")]
    return urljoin(base_url.rstrip("/") + "/", stem)


def _as_date(value) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return str(value)


def _as_tags(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(t.strip() for t in value.split(",") if t.strip())
    if isinstance(value, (list, tuple)):
        return tuple(str(t).strip() for t in value if str(t).strip())
    return (str(value),)
