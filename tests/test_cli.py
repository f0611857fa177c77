"""The `ragserver` command end to end, in real subprocesses."""

from __future__ import annotations

import json
import re
from dataclasses import asdict

from conftest import CORPUS

from ragserver import cli
from ragserver.grounding import check_answer


def test_ingest_search_stats_roundtrip(tmp_path, posts_dir, runner):
    db = tmp_path / "cli.db"
    result = runner("ingest", posts_dir, "--db", db, "--base-url", "https://til.example/",
                    "--quiet", check=True)
    assert result.stdout.startswith("posts: 27 added, 0 updated, 0 unchanged, 0 deleted, 0 skipped;")
    assert result.stderr == ""  # --quiet: nothing but warnings, and there were none
    found = runner("search", "Turning WAL mode off again", "--db", db, "-n", "3", "--json",
                   check=True)
    rows = [json.loads(line) for line in found.stdout.splitlines()]
    assert len(rows) == 3
    assert {"source", "title", "url", "anchor", "text", "score"} <= set(rows[0])
    assert rows[0]["source"] == "sqlite/enabling-wal-mode.md"
    assert rows[0]["url"] == "https://til.example/sqlite/enabling-wal-mode"
    assert rows[0]["anchor"] == "turning-wal-mode-off-again"
    assert rows[0]["score"] >= rows[1]["score"] >= rows[2]["score"]
    plain = runner("search", "Turning WAL mode off again", "--db", db, "-n", "1", check=True)
    assert "https://til.example/sqlite/enabling-wal-mode#turning-wal-mode-off-again" in plain.stdout
    stats = json.loads(runner("stats", "--db", db, "--json", check=True).stdout)
    assert stats["posts"] == 27 and stats["passages"] == stats["vectors"] == stats["index_rows"]
    assert stats["model"] == "sentence-transformers/all-MiniLM-L6-v2" and stats["dimension"] == 384
    assert stats["query_prefix"] == "" and stats["index_bytes"] > 0
    again = runner("ingest", posts_dir, "--db", db, "--base-url", "https://til.example/",
                   "--quiet", check=True)
    assert again.stdout.startswith("posts: 0 added, 0 updated, 27 unchanged, 0 deleted, 0 skipped; "
                                   "passages embedded: 0;")


def test_search_on_missing_and_empty_database(tmp_path, runner):
    missing = runner("search", "anything", "--db", tmp_path / "none.db")
    assert missing.returncode == 1 and "ragserver ingest" in missing.stderr
    assert "Traceback" not in missing.stderr
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    made = runner("ingest", empty_dir, "--db", tmp_path / "empty.db")
    assert made.returncode == 0 and "0 added" in made.stdout
    empty = runner("search", "anything", "--db", tmp_path / "empty.db")
    assert empty.returncode == 0 and "No posts" in empty.stderr and empty.stdout == ""
    stats = runner("stats", "--db", tmp_path / "empty.db")
    assert stats.returncode == 0 and "No posts" in stats.stdout


def test_bad_input_is_skipped_with_warnings_and_exit_status(tmp_path, posts_dir, runner):
    (posts_dir / "sqlite" / "broken.md").write_bytes(b"# Title\n\n\xff\xfe\xfa not utf-8\n")
    (posts_dir / "sqlite" / "bad-front.md").write_text("---\ntitle: [oops\n---\n\nBody text here.\n")
    result = runner("ingest", posts_dir, tmp_path / "missing-dir", "--db", tmp_path / "b.db",
                    "--quiet")
    assert result.returncode == 3
    assert "27 added" in result.stdout and "3 skipped" in result.stdout
    assert "broken.md: not UTF-8" in result.stderr
    assert "bad-front.md: malformed front matter" in result.stderr
    assert "missing-dir" in result.stderr
    assert "Traceback" not in result.stderr


def test_ndjson_from_stdin(tmp_path, runner):
    lines = [json.dumps({"id": p.stem, "url": f"https://til.example/{p.stem}",
                         "content": p.read_text()}) for p in sorted((CORPUS / "sqlite").glob("*.md"))[:5]]
    result = runner("ingest", "-", "--db", tmp_path / "s.db", "--quiet",
                    input="\n".join(lines) + "\nnot json\n")
    assert result.returncode == 3 and "5 added" in result.stdout and "stdin line 6" in result.stderr


QUICK = {"RAGSERVER_MAX_ANSWER_TOKENS": "40"}


def test_ask_streams_an_answer_then_numbered_sources(seeded_db, runner):
    result = runner("ask", "How do I enable WAL mode for a SQLite database?", "--db", seeded_db,
                    env=QUICK, check=True)
    quick, _, rest = result.stdout.partition("\nAnswer:\n")
    assert quick.startswith("From the posts [") and "\n> " in quick
    assert "wal" in quick.lower()
    answer_text, _, sources = rest.rpartition("\n\n")
    assert answer_text.strip()
    lines = sources.strip().splitlines()
    assert lines[0].startswith("[1] Enabling WAL mode for SQLite database files")
    assert " — https://til.example/sqlite/enabling-wal-mode" in lines[0]
    assert [line.split("]")[0] for line in lines] == [f"[{n}" for n in range(1, len(lines) + 1)]


def test_ask_json_events(seeded_db, runner):
    result = runner("ask", "How do I run a script with uv?", "--db", seeded_db, "--json", "-n", "3",
                    env=QUICK, check=True)
    events = [json.loads(line) for line in result.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["sources", "quick"] and kinds[-2:] == ["checked", "done"]
    assert "token" in kinds and len(events[0]["data"]) <= 3


def test_ask_without_a_model_quotes_the_posts(seeded_db, runner):
    result = runner("ask", "How do I enable WAL mode for a SQLite database?", "--db", seeded_db,
                    env={"RAGSERVER_LLM_MODEL": "none"}, check=True)
    assert re.match(r"From the posts \[\d\] .*:\n> ", result.stdout)
    assert "Answer:" not in result.stdout and "wal" in result.stdout.lower()


def test_ask_fails_clearly_without_posts_or_model(tmp_path, seeded_db, runner):
    empty = tmp_path / "nothing"
    empty.mkdir()
    runner("ingest", empty, "--db", tmp_path / "e.db", check=True)
    no_posts = runner("ask", "anything?", "--db", tmp_path / "e.db")
    assert no_posts.returncode == 1 and "No posts" in no_posts.stderr
    no_model = runner("ask", "How do I enable WAL mode?", "--db", seeded_db,
                      env={"RAGSERVER_LLM_MODEL": str(tmp_path / "missing.gguf")})
    assert no_model.returncode == 1 and "missing.gguf': not a file" in no_model.stderr
    assert "smollm2, qwen-coder-0.5b, none" in no_model.stderr
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 100)
    bad_model = runner("ask", "How do I enable WAL mode?", "--db", seeded_db,
                       env={"RAGSERVER_LLM_MODEL": str(broken)})
    assert bad_model.returncode == 1 and "cannot load" in bad_model.stderr
    assert "Traceback" not in no_posts.stderr + no_model.stderr + bad_model.stderr


def test_ask_says_where_the_sentences_it_cited_for_the_model_come_from(capsys):
    # What `ragserver ask` prints after streaming an answer: the citations the check added
    # are not in the streamed text, so they are listed; unsupported sentences are marked.
    printed = "Run `sqlite-utils enable-wal my.db` to switch it on. Or try `sqlite3 --turbo`."
    sources = ["Enable WAL with the sqlite-utils tool: `sqlite-utils enable-wal my.db`."]
    checked = check_answer(printed, sources, "How do I enable WAL mode?")
    cli._print_checks({"text": checked.text, "segments": [asdict(s) for s in checked.segments],
                       **checked.counts(), "looped": False}, printed)
    out = capsys.readouterr().out
    assert ("Found in the sources, though the model did not cite them:\n"
            "  [1] Run `sqlite-utils enable-wal my.db` to switch it on.\n") in out
    assert "⚠ Or try `sqlite3 --turbo`." in out
    assert "cites none" not in out

