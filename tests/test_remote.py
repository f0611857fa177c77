"""The OpenAI-compatible backend against a real llama_cpp.server on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from ragserver import create_app
from ragserver.answer import Options, answer
from ragserver.gate import Gate
from ragserver.llm import LLMError, RemoteChatModel, VocabOnly, packaged_gguf


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama_server(log_path):
    """`ragserver model-server` (llama_cpp.server) with the same SmolLM2 file, on 127.0.0.1,
    as the Procfile's llm: process runs it; (process, url)."""
    port = _free_port()
    log = open(log_path, "w+")
    env = {**os.environ, "RAGSERVER_LLM_MODEL": "smollm2", "RAGSERVER_LLM_CONTEXT": "4096"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ragserver", "model-server", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/v1/models", timeout=2).read()
            return proc, url
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                log.seek(0)
                pytest.fail(f"llama_cpp.server did not start: {log.read()[-2000:]}")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    proc, url = start_llama_server(tmp_path_factory.mktemp("llama") / "server.log")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_remote_model_streams_an_answer(llama_server, seeded_conn, embedder):
    model = RemoteChatModel(llama_server, tokenizer=VocabOnly(packaged_gguf()))
    events = list(answer("How do I enable WAL mode for a SQLite database?", [],
                         db=seeded_conn, embedder=embedder, model=model, gate=Gate(),
                         options=Options(max_answer_tokens=40)))
    kinds = [e.kind for e in events]
    assert kinds[0] == "sources" and kinds[-1] == "done" and kinds.count("token") > 3
    assert events[0].data[0]["source"] == "sqlite/enabling-wal-mode.md"


def test_app_uses_the_remote_backend_when_configured(llama_server, seeded_db, embedder):
    app = create_app({"db": str(seeded_db), "llm_url": llama_server, "max_answer_tokens": 30},
                     embedder=embedder)
    body = app.test_client().post("/api/ask", json={"question": "How do I run a script with uv?"})
    text = body.get_data(as_text=True)
    assert "event: token" in text and text.rstrip().split("\n\n")[-1].startswith("event: done")


def test_unreachable_remote_is_a_clear_error(seeded_conn, embedder):
    model = RemoteChatModel(f"http://127.0.0.1:{_free_port()}")
    events = list(answer("How do I enable WAL mode for a SQLite database?", [],
                         db=seeded_conn, embedder=embedder, model=model, gate=Gate()))
    assert events[-1].kind == "error" and "cannot reach the model server" in events[-1].data["message"]
    with pytest.raises(LLMError):
        list(model.stream([{"role": "user", "content": "hi"}], 5))


def test_server_dying_mid_answer_is_a_visible_error(tmp_path, seeded_db, embedder):
    proc, url = start_llama_server(tmp_path / "server.log")
    try:
        app = create_app({"db": str(seeded_db), "llm_url": url, "max_answer_tokens": 300},
                         embedder=embedder)
        client = app.test_client()
        turn = client.post("/chat", data={"question": "How do I enable WAL mode for a SQLite "
                                          "database?", "c": "crash"}, headers={"HX-Request": "true"})
        stream_url = turn.get_data(as_text=True).split('sse-connect="')[1].split('"')[0]
        response = client.get(stream_url, buffered=False)
        chunks = iter(response.response)
        seen = ""
        while seen.count("event: token") < 3:
            seen += next(chunks).decode()
        proc.kill()  # the model server dies mid-answer
        seen += "".join(chunk.decode() for chunk in chunks)
    finally:
        proc.kill()
        proc.wait()
    assert 'class="error"' in seen and "event: end" in seen
    assert seen.index('class="error"') > seen.index("event: token")
