"""The activity store under faults: the server killed mid-answer, a full disk, and many
writers at once. Readers' answers never depend on it; what it committed survives."""

from __future__ import annotations

import json
import multiprocessing
import signal
import sqlite3
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import psutil
import pytest

from conftest import make_database
from server import Server
from test_faults import _in_mount_namespace, needs_mounts

from ragserver.activity import Activity

WAL = "How do I enable WAL mode for a SQLite database?"
ROOT = Path(__file__).resolve().parent.parent


def _post(url: str, form: dict, headers: dict | None = None) -> tuple[int, str, dict]:
    request = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(),
                                     headers=headers or {}, method="POST")

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=300) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


def _kill_9(server: Server) -> None:
    """SIGKILL gunicorn's master, its worker and the worker's model process at once."""
    master = psutil.Process(server.process.pid)
    for process in [*master.children(recursive=True), master]:
        process.send_signal(signal.SIGKILL)
    server.process.wait()


@pytest.mark.backends("sqlite")
def test_kill_9_mid_answer_keeps_the_conversation_and_marks_the_cut_answer(seeded_db, tmp_path):
    activity = tmp_path / "activity.db"
    env = {"RAGSERVER_ACTIVITY_DB": str(activity), "RAGSERVER_LLM_MODEL": "smollm2",
           "RAGSERVER_MAX_ANSWER_TOKENS": "300"}
    cid = "killed-" + str(time.time_ns())
    server = Server(seeded_db, env, tmp_path / "first.log")
    with server:
        status, _, headers = _post(server.url + "/chat", {"question": WAL, "c": cid})
        assert status == 303
        first = headers["Location"].rsplit("#turn-", 1)[1]
        status, fragment, _ = _post(server.url + "/chat", {"question": "And how do I check it?",
                                                            "c": cid}, {"HX-Request": "true"})
        assert status == 200
        second = fragment.split('id="turn-', 1)[1].split('"', 1)[0]
        stream = urllib.request.urlopen(f"{server.url}/chat/stream/{second}", timeout=300)
        while b"event: token" not in stream.readline():  # the model is writing the answer
            pass
        _kill_9(server)
    assert sqlite3.connect(activity).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    with Server(seeded_db, env, tmp_path / "second.log") as again:
        page = urllib.request.urlopen(f"{again.url}/?c={cid}", timeout=60).read().decode()
        assert f'id="turn-{first}"' in page and f'id="turn-{second}"' in page
        assert "This answer did not finish" in page
        whole = urllib.request.urlopen(f"{again.url}/a/{first}", timeout=60).read().decode()
        assert WAL in whole and 'class="sources"' in whole and "did not finish" not in whole


@needs_mounts
@pytest.mark.backends("sqlite")
def test_a_full_disk_loses_activity_never_an_answer(seeded_db, tmp_path):
    """activity.db on a 1 MB file system that fills up: every question is still answered,
    /healthz counts the lost writes, the file stays whole, and writing resumes once there
    is room."""
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    script = f"""
import json, sys
sys.path.insert(0, {str(ROOT / 'tests')!r})
from conftest import MODEL
from ragserver import create_app
from ragserver.embedder import SentenceTransformerEmbedder
embedder = SentenceTransformerEmbedder(MODEL, "", "")
app = create_app({{"db": {str(seeded_db)!r}, "activity_db": "{disk}/activity.db",
                  "llm_model": "none"}}, embedder=embedder)
client = app.test_client()
def ask():
    body = client.post("/api/ask", json={{"question": {WAL!r}}}).get_data(as_text=True)
    return "event: done" in body
results = {{"before": ask()}}
import os
filler = os.open("{disk}/filler", os.O_WRONLY | os.O_CREAT)  # fill the disk
try:
    while True:
        os.write(filler, b"x" * 4096)
except OSError:
    os.close(filler)
results["full"] = [ask() for _ in range(3)]
results["health_full"] = client.get("/healthz").get_json()["activity"]
os.remove("{disk}/filler")
results["after"] = ask()
results["health_after"] = client.get("/healthz").get_json()["activity"]
results["stored"] = len(app.extensions["ragserver"].activity.turns_since(0))
print(json.dumps(results))
"""
    result = _in_mount_namespace(
        'mount -t tmpfs -o size=1m tmpfs "$DISK"\n'
        'python -c "$SCRIPT"\n'
        'cp "$DISK"/activity.db* "$OUT"/\n', DISK=str(disk), OUT=str(out), SCRIPT=script)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["before"] and found["full"] == [True] * 3 and found["after"]
    assert found["health_full"]["failed_writes"] >= 3
    assert "full" in found["health_full"]["last_error"]
    assert found["health_after"]["last_write_ok"] is True  # writing again
    assert found["stored"] >= 2  # before the disk filled, and after
    assert "activity not recorded" in result.stderr
    db = sqlite3.connect(out / "activity.db")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def _writer(target: str, worker: int, turns: int, queue) -> None:
    store = Activity(target)
    for i in range(turns):
        turn_id = f"w{worker}-{i}"
        store.start_turn(turn_id, f"c{worker}", f"question {i} of writer {worker}", "chat")
        store.finish_turn(turn_id, answer="an answer", state="done", answered=True,
                          similarity=0.7, sources=[], quick=None, segments=[], timings={},
                          error="")
        if i % 10 == 0:
            store.add_feedback(turn_id, 1, "")
    queue.put(store.failures)


def test_concurrent_writers_lose_nothing(request, backend, tmp_path):
    """Four processes (four gunicorn workers, say) write to one store at once."""
    target = (str(tmp_path / "activity.db") if backend == "sqlite"
              else make_database(request, backend, tmp_path, "writers"))
    Activity(target).conversation("create the tables")
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_writer, args=(target, w, 100, queue)) for w in range(4)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    failures = [queue.get(timeout=10) for _ in workers]
    seconds = time.perf_counter() - started
    assert failures == [0, 0, 0, 0]
    store = Activity(target)
    turns = store.turns_since(0)
    assert len(turns) == 400 and all(t.state == "done" for t in turns), seconds
    assert len(store.feedback_since(0)) == 40
    print(f"{backend}: 4 writers x 100 answers (start, finish) in {seconds:.1f} s", file=sys.stderr)
