"""One JSON shape per kind of result, the same for the API, the CLI and the pages."""

from __future__ import annotations

import json
import re

from markupsafe import Markup

from ragserver import create_app
from ragserver.answer import Source
from ragserver.results import (answer_source, more_passage, ranked_passage, related_post,
                               search_hit)
from ragserver.storage import Hit, RelatedPost

HIT = Hit(passage_id=7, source="sqlite/wal.md", title="WAL <mode>", url="https://x.example/wal",
          anchor="turning-it-off", heading_path=("Turning it off",),
          text="Run `PRAGMA journal_mode=wal;` <b>once</b>.", score=0.123456, date="2024-05-01",
          similarity=0.654321)


def test_search_hit_keeps_the_documented_keys_and_a_marked_snippet():
    result = search_hit(HIT, "wal")
    assert list(result) == ["source", "title", "url", "anchor", "date", "snippet", "score"]
    assert result["score"] == 0.1235
    assert isinstance(result["snippet"], Markup)
    assert "<mark>wal</mark>" in result["snippet"] and "&lt;b&gt;" in result["snippet"]
    # JSON writes the Markup as the plain string it is.
    assert json.dumps(result) == json.dumps({**result, "snippet": str(result["snippet"])})


def test_more_passage_keys():
    assert more_passage(HIT, "wal") == {"anchor": "turning-it-off", "headings": ["Turning it off"],
                                        "snippet": search_hit(HIT, "wal")["snippet"],
                                        "score": 0.1235}


def test_ranked_passage_is_the_cli_search_line():
    assert ranked_passage(HIT) == {
        "source": "sqlite/wal.md", "title": "WAL <mode>", "url": "https://x.example/wal",
        "anchor": "turning-it-off", "link": "https://x.example/wal#turning-it-off",
        "headings": ["Turning it off"], "text": HIT.text, "score": 0.1235, "similarity": 0.6543}
    assert ranked_passage(Hit(1, "s", "t", "", "", (), "x", 2.0))["similarity"] is None


def test_related_post_keys():
    post = RelatedPost("uv/run.md", "uv run", "https://x.example/run", None, 0.56789)
    assert related_post(post) == {"source": "uv/run.md", "title": "uv run",
                                  "url": "https://x.example/run", "date": None, "score": 0.5679}


def test_answer_source_keys():
    source = Source(2, 7, "sqlite/wal.md", "WAL", "https://x.example/wal", "off", "text", 0.71234,
                    ("Off",))
    assert answer_source(source) == {
        "n": 2, "passage_id": 7, "source": "sqlite/wal.md", "title": "WAL",
        "url": "https://x.example/wal", "anchor": "off", "text": "text", "score": 0.7123,
        "headings": ["Off"], "link": "https://x.example/wal#off"}


def test_the_search_page_shows_the_api_snippet_and_link(seeded_db, embedder):
    client = create_app({"db": str(seeded_db), "search_rate": 0}, embedder=embedder).test_client()
    api = client.get("/api/search?q=turning+wal+off&n=10").get_json()["results"]
    page = client.get("/search?q=turning+wal+off").get_data(as_text=True)
    shown = re.findall(r'<a class="title" href="([^"]*)">.*?<p class="snippet">(.*?)</p>', page,
                       re.DOTALL)
    assert shown == [(r["url"] + ("#" + r["anchor"] if r["anchor"] else ""), r["snippet"])
                     for r in api]
