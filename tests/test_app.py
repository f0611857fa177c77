"""The web app factory and /healthz, on a real database."""

from __future__ import annotations

import re

from conftest import ROOT, ragserver
from ragserver import create_app
from ragserver.config import setting_fields


def test_healthz_reports_missing_then_ready_database(new_database, backend, posts_dir):
    app = create_app({"db": new_database})
    client = app.test_client()
    missing = client.get("/healthz")
    assert missing.status_code == 503 and missing.json["status"] == "no database"
    ragserver("ingest", posts_dir, "--db", new_database, "--quiet", check=True)
    ready = client.get("/healthz")
    assert ready.status_code == 200 and ready.json["status"] == "ok"
    assert ready.json["backend"] == backend
    assert ready.json["vector_index"] == {"sqlite": "vss", "postgresql": "hnsw"}[backend]
    assert ready.json["posts"] == 27
    assert ready.json["passages"] == ready.json["vectors"] == ready.json["index_rows"] > 27


def test_healthz_reports_a_corrupt_database(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not an SQLite database" * 100)
    response = create_app({"db": str(bad)}).test_client().get("/healthz")
    assert response.status_code == 503 and response.json["status"] == "database error"


def test_readme_settings_table_matches_config():
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(RAGSERVER_[A-Z_]+)` \| ([^|]+) \|", readme, re.M))
    assert set(rows) == {env for _, env, _, _ in setting_fields()}
    for _, env, default, _ in setting_fields():
        if isinstance(default, int):
            assert rows[env].strip() == f"`{default}`", env
        elif default:
            assert rows[env].strip() == f"`{default}`", env


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    first_screen = readme.split("---", 1)[0]
    commands = re.findall(r"^(\./run \w+)", first_screen, re.M)
    assert commands == ["./run demo", "./run test"]
    assert "./run test" in (ROOT / ".ci" / "run").read_text()


def test_healthz_reports_the_answer_model(tmp_path, posts_dir):
    ragserver("ingest", posts_dir, "--db", tmp_path / "m.db", "--quiet", check=True)
    ok = create_app({"db": str(tmp_path / "m.db")}).test_client().get("/healthz")
    assert ok.status_code == 200
    assert ok.json["llm"]["model"] == "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    assert ok.json["llm"]["busy"] is False and ok.json["llm"]["waiting"] == 0
    missing = create_app({"db": str(tmp_path / "m.db"), "llm_model": str(tmp_path / "no.gguf")})
    response = missing.test_client().get("/healthz")
    assert response.status_code == 503 and response.json["status"] == "answer model missing"
    assert "no.gguf" in response.json["llm"]["error"]
