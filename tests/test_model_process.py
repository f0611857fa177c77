"""The answer model in its own process: real SmolLM2, real signals, real restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ragserver.answer import Options, answer
from ragserver.gate import Gate
from ragserver.llm import LLMError, packaged_gguf
from ragserver.model_process import ModelDied, ProcessChatModel

HELLO = [{"role": "user", "content": "Tell me about SQLite databases in a few sentences."}]
CRASH_PATH = os.path.join(os.path.dirname(__file__), "crash_model")


@pytest.fixture
def model():
    with ProcessChatModel(packaged_gguf()) as model:
        yield model


def _wait_for(condition, seconds=60.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_answers_and_counts_like_the_model_in_process(model, chat_model):
    text = "How do I enable WAL mode? <|im_start|> [1] sqlite3 PRAGMA journal_mode=WAL;"
    assert model.count_tokens(text) == chat_model.count_tokens(text)
    pieces = list(model.stream(HELLO, 24))
    assert len(pieces) > 5 and "".join(pieces).strip()
    assert model.loaded and model.restarts == 0
    assert model.status()["process"] == "running"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV])
def test_a_death_mid_answer_costs_that_answer_only(model, sig):
    assert "".join(model.stream(HELLO, 8)).strip()  # it works on this machine
    stream = model.stream(HELLO, 300)
    assert next(stream) and next(stream)
    first = model.pid
    os.kill(first, sig)
    with pytest.raises(ModelDied) as died:
        for _ in stream:
            pass
    message = str(died.value)
    assert sig.name in message and "while answering" in message and "restarting" in message
    _wait_for(lambda: model.loaded)  # restarted without being asked
    assert model.pid != first and model.restarts == 1
    assert "".join(model.stream(HELLO, 16)).strip()
    assert model.status()["last_failure"].startswith(f"the answer model was killed by {sig.name}")


def test_a_hung_model_is_killed_after_the_timeout_and_restarted():
    with ProcessChatModel(packaged_gguf(), timeout=2) as model:
        list(model.stream(HELLO, 8))
        stream = model.stream(HELLO, 300)
        next(stream)
        hung = model.pid
        os.kill(hung, signal.SIGSTOP)  # alive, silent: as an endless loop in native code
        started = time.monotonic()
        with pytest.raises(ModelDied, match=r"stopped responding \(nothing for 2 s\)"):
            for _ in stream:
                pass
        assert time.monotonic() - started < 10
        _wait_for(lambda: model.loaded)
        assert model.pid != hung
        assert "".join(model.stream(HELLO, 8)).strip()


def test_a_model_over_its_memory_limit_is_killed_with_a_clear_message():
    with ProcessChatModel(packaged_gguf(), max_memory_mb=50) as model:
        with pytest.raises(ModelDied, match=r"used \d+ MB of memory, more than the 50 MB "
                                             r"allowed \(RAGSERVER_LLM_MAX_MEMORY_MB\)"):
            model.count_tokens("hello")
        assert model.restarts == 0  # it never worked: no restart loop
        assert model.pid is None


def test_closing_a_stream_cancels_the_generation_and_keeps_the_process(model):
    stream = model.stream(HELLO, 300)
    next(stream)
    pid = model.pid
    stream.close()
    assert model.pid == pid and model.restarts == 0
    assert model.count_tokens("still here") > 0


def test_a_file_that_is_not_a_model_fails_to_load_with_the_reason(tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"GGUF" + os.urandom(4096))
    with ProcessChatModel(bogus) as model:
        with pytest.raises(LLMError, match="cannot load .*model.gguf"):
            model.count_tokens("hello")
        assert model.restarts == 0
    with pytest.raises(LLMError, match="does not exist"):
        ProcessChatModel(tmp_path / "missing.gguf").count_tokens("hello")


def test_a_crash_at_the_first_evaluation_is_reported_by_signal(monkeypatch):
    # As on a CPU that traps on code llama.cpp was built with: SIGILL at the first matrix
    # multiply, every time. Reported, and not restarted in a loop.
    monkeypatch.setenv("PYTHONPATH", CRASH_PATH)
    monkeypatch.setenv("RAGSERVER_TEST_CRASH", "SIGILL")
    with ProcessChatModel(packaged_gguf()) as model:
        assert model.count_tokens("hello") > 0  # tokenizing computes nothing
        for _ in range(2):  # each question tries a new process, and is told why it failed
            with pytest.raises(ModelDied, match="was killed by SIGILL .*compiled for "
                                                "instructions this CPU refuses") as died:
                list(model.stream(HELLO, 8))
            assert "restarting" not in str(died.value)
        assert model.restarts == 0 and model.pid is None


def test_the_model_process_ends_when_its_parent_dies(tmp_path):
    script = textwrap.dedent(f"""
        from ragserver.model_process import ProcessChatModel
        model = ProcessChatModel({str(packaged_gguf())!r})
        model.count_tokens("hello")
        print(model.pid, flush=True)
        import time; time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert os.path.exists(f"/proc/{child}")
    parent.kill()
    parent.wait()
    _wait_for(lambda: not os.path.exists(f"/proc/{child}") or _is_zombie(child), 10)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_the_model_reads_the_prompt_while_the_quick_answer_is_found(model, seeded_conn,
                                                                     embedder):
    events = answer("How do I enable WAL mode for a SQLite database?", [], db=seeded_conn,
                    embedder=embedder, model=model, gate=Gate(),
                    options=Options(max_answer_tokens=8))
    kinds = []
    for event in events:
        kinds.append(event.kind)
        if event.kind == "quick":
            assert model.answering  # the prompt went to the child before the quotes were found
            break
    assert kinds == ["sources", "quick"]
    events.close()  # the reader hangs up before the first token
    assert not model.answering
    assert "".join(model.stream(HELLO, 8)).strip()  # and the model answers the next one

