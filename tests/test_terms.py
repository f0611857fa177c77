"""One rule splits a query into words; keyword search's FTS5 query follows from it."""

from __future__ import annotations

import re
import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st

from ragserver.store import fts_query
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


def fts_from_terms(text: str) -> str:
    """store.fts_query re-expressed with the shared tokenizer."""
    return " OR ".join(f'"{w}"' for w in search_terms(text))


def test_fts_query_is_the_search_terms_quoted():
    for query in QUERIES:
        assert fts_from_terms(query) == fts_query(query), query


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)
       | st.lists(st.sampled_from(sorted(STOPWORDS) + ["AND", "OR", "NOT", "NEAR", "wal", "x*",
                                                       '"', "-", "é", "_", "(", ")", ":", "^"]),
                  max_size=8).map(" ".join))
def test_fts_query_is_the_search_terms_quoted_for_any_text(text):
    assert fts_from_terms(text) == fts_query(text)


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
