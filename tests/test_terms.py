"""One rule splits a query into words: keyword search and snippet marks follow it alike."""

from __future__ import annotations

import re
import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st

from ragserver.render import highlight
from ragserver.storage.sqlite import fts_query
from ragserver.terms import STOPWORDS, search_terms, split_words

QUERIES = [
    "", "   ", "?!", "How do I enable the WAL mode?", "what is it", "the THE The",
    'say "hi" OR NOT x*', "wal AND journal OR mode NOT off", "fts5 NEAR(wal mode, 2)",
    "NEAR/3 sqlite", "title:wal", "^start", "col : value", "a* b* prefix*", "x in c",
    "python's json.dumps()", "pytest-fixtures", "sqlite_master __init__", "e-mail re-run",
    "café naïve Über straße", "İstanbul ǅemal", "日本語の検索", "Ωmega αβγ", "١٢٣ 2.15 v0.3.1",
    "emoji 🎉 party", "tab\tnew\nline", "\"unbalanced quote", "'single' `back` {brace}",
    "wal wal WAL Wal", "C++ C# F#", "<script>alert(1)</script>", "100% sure & 50/50",
]


def fts_query_before_terms(text: str) -> str:
    """The FTS5 query as it was built before keyword search shared the tokenizer: keyword
    results depend on it, so the shared rule must give the same string for any text."""
    words = list(dict.fromkeys(re.findall(r"\w+", text.lower())))
    kept = [w for w in words if w not in STOPWORDS] or words
    return " OR ".join(f'"{w}"' for w in kept)


def fts_from_terms(text: str) -> str:
    """The FTS5 query the SQLite backend sends for this text."""
    return fts_query(text)


def test_fts_query_is_the_search_terms_quoted():
    for query in QUERIES:
        assert fts_query(query) == " OR ".join(f'"{w}"' for w in search_terms(query)), query
        assert fts_query(query) == fts_query_before_terms(query), query


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)
       | st.lists(st.sampled_from(sorted(STOPWORDS) + ["AND", "OR", "NOT", "NEAR", "wal", "x*",
                                                       '"', "-", "é", "_", "(", ")", ":", "^"]),
                  max_size=8).map(" ".join))
def test_fts_query_is_the_search_terms_quoted_for_any_text(text):
    assert fts_query(text) == fts_query_before_terms(text)


def test_every_fts_query_from_terms_is_valid_fts5():
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE t USING fts5(text, tokenize = 'porter unicode61')")
    conn.execute("INSERT INTO t VALUES ('enable WAL mode with pragma journal_mode, café')")
    for query in QUERIES:
        fts = fts_from_terms(query)
        if fts:  # search_keyword skips an empty query
            conn.execute("SELECT rowid FROM t WHERE t MATCH ?", (fts,)).fetchall()
    assert conn.execute("SELECT count(*) FROM t WHERE t MATCH ?",
                        (fts_from_terms("How do I enable modes?"),)).fetchone() == (1,)


def test_words_are_runs_of_word_characters_lower_cased_once():
    assert split_words("WAL wal, journal_mode=WAL; x*") == ["wal", "journal_mode", "x"]
    assert split_words("café-Über") == ["café", "über"]


def test_stopwords_are_dropped_unless_nothing_else_is_left():
    assert search_terms("How do I enable the WAL mode?") == ["enable", "wal", "mode"]
    assert search_terms("what is it") == ["what", "is", "it"]
    assert search_terms("x in c") == ["x", "c"]
    assert search_terms("?!") == []


def _marked(html) -> list[str]:
    return [m.lower() for m in re.findall(r"<mark>(.*?)</mark>", str(html))]


def test_snippets_mark_the_words_search_looks_for_not_stopwords():
    text = "How do I turn on the WAL mode? Enable it with a pragma."
    assert _marked(highlight(text, "How do I enable the WAL mode?")) == ["wal", "mode", "enable"]


def test_a_query_of_stopwords_only_marks_them_as_search_finds_them():
    assert _marked(highlight("What is it, and what is it for?", "what is it")) == \
        ["what", "is", "it", "what", "is", "it"]


def test_one_letter_terms_are_marked_as_whole_words_only():
    html = highlight("select x from counter; xylophone and c code in C", "x in c")
    assert _marked(html) == ["x", "c", "c"]
    assert "xylophone" in str(html) and "<mark>code" not in str(html)


def test_one_letter_terms_are_not_marked_at_the_end_of_a_contraction():
    html = highlight("There's x and it’s y, but don't; values ('t', 's')", "python's x y t")
    assert _marked(html) == ["x", "y", "t", "s"]


def test_longer_terms_also_mark_the_words_they_begin():
    assert _marked(highlight("Modes of WAL: mode, modes, remodel", "mode")) == \
        ["modes", "mode", "modes"]


def test_the_snippet_window_is_around_the_first_search_term_not_a_stopword():
    text = "The " + "filler words here " * 40 + "then WAL appears near the end."
    html = str(highlight(text, "the wal"))
    assert _marked(html) == ["wal"] and html.startswith("…")
