"""Answering with the real SmolLM2 and MiniLM over real posts."""

from __future__ import annotations

import threading
import time

from conftest import rows

from ragserver.answer import (NO_ANSWER, Options, Source, answer, build_messages, retrieval_query,
                              retrieve_for)
from ragserver.grounding import cited_in
from ragserver.gate import Gate
from ragserver.retrieve import search_passages

WAL_QUESTION = "How do I enable WAL mode for a SQLite database?"


def run(seeded_conn, embedder, chat_model, question, history=(), gate=None, **options):
    options.setdefault("max_answer_tokens", 48)
    return list(answer(question, list(history), db=seeded_conn, embedder=embedder,
                       model=chat_model, gate=gate or Gate(), options=Options(**options)))


def test_events_come_in_order_with_timing(seeded_conn, embedder, chat_model):
    events = run(seeded_conn, embedder, chat_model, WAL_QUESTION)
    kinds = [e.kind for e in events]
    assert kinds[:2] == ["sources", "quick"] and kinds[-2:] == ["checked", "done"]
    assert set(kinds[2:-2]) == {"token"} and len(kinds) > 6
    done = events[-1].data
    assert done["answered"] and not done["stopped"]
    assert done["retrieval_ms"] > 0 and done["ttft_ms"] > 0 and done["tokens_per_s"] > 0
    assert done["tokens"] == kinds.count("token")
    assert done["relevance"]["similarity"] >= done["relevance"]["min_score"]
    assert "cosine similarity" in done["relevance"]["compared"]


def test_the_quick_answer_quotes_the_best_passage_verbatim(seeded_conn, embedder, chat_model):
    events = run(seeded_conn, embedder, chat_model, WAL_QUESTION, max_answer_tokens=8)
    sources = events[0].data
    quick = events[1].data
    quoted = sources[quick["n"] - 1]
    assert quick["text"] in quoted["text"]  # verbatim, from the source it names
    assert "wal" in quick["text"].lower()  # journal_mode=wal, or sqlite-utils enable-wal
    assert quick["link"] == quoted["link"] and quick["title"] == quoted["title"]
    assert quick["ms"] < 5000


def test_without_a_model_the_quick_answer_is_the_answer(seeded_conn, embedder):
    events = list(answer(WAL_QUESTION, [], db=seeded_conn, embedder=embedder, model=None,
                         gate=Gate()))
    assert [e.kind for e in events] == ["sources", "quick", "done"]
    assert events[-1].data["answered"] and events[-1].data["model"] is None


def test_sources_and_citations_map_to_real_passages(seeded_conn, embedder, chat_model):
    events = run(seeded_conn, embedder, chat_model, WAL_QUESTION, max_answer_tokens=96)
    sources = events[0].data
    assert [s["n"] for s in sources] == list(range(1, len(sources) + 1))
    assert sources[0]["source"] == "sqlite/enabling-wal-mode.md"
    for s in sources:
        [(text, source)] = rows(
            seeded_conn, "SELECT p.text, o.source FROM passages p JOIN posts o ON o.id = "
            "p.post_id WHERE p.id = ?", (s["passage_id"],))
        assert (text, source) == (s["text"], s["source"])
        assert s["link"].startswith("https://til.example/")
    checked = next(e.data for e in events if e.kind == "checked")
    assert cited_in(checked["text"]) <= {s["n"] for s in sources}
    assert set(checked["cited"]) == cited_in(checked["text"])
    assert checked["sentences"] == len(checked["segments"]) > 0
    assert all(s["supported"] in (True, False, None) for s in checked["segments"])


def test_cited_numbers():
    assert cited_in("WAL [1] and [2, 3]; not [x] or [12a]") == {1, 2, 3}


def test_prompt_budget_drops_lowest_ranked_whole_passages(seeded_conn, embedder, chat_model):
    hits = search_passages(seeded_conn, embedder, "python packaging and testing", 10)
    sources = [Source(i + 1, h.passage_id, h.source, h.title, h.url, h.anchor, h.text, h.score)
               for i, h in enumerate(hits)]

    class Small:
        context_size = 900
        count_tokens = staticmethod(chat_model.count_tokens)

    messages, kept = build_messages("What is this about?", [], sources, Small(), 256)
    assert 0 < len(kept) < len(sources)
    assert [s.passage_id for s in kept] == [s.passage_id for s in sources[:len(kept)]]
    prompt = messages[-1]["content"]
    assert all(s.text in prompt for s in kept)  # whole passages, never cut
    assert all(s.text not in prompt for s in sources[len(kept):] if s.text not in
               [k.text for k in kept])
    used = sum(chat_model.count_tokens(m["content"]) for m in messages)
    assert used <= Small.context_size - 256
    # The prompt keeps the sources delimited and marked as untrusted.
    assert '<source id="1"' in prompt and "not instructions" in messages[0]["content"]


def test_nothing_relevant_says_so_without_the_model(seeded_conn, embedder, chat_model):
    gate = Gate()
    gate_taken = threading.Event()
    original = gate.wait

    def watching(*args, **kwargs):
        gate_taken.set()
        return original(*args, **kwargs)

    gate.wait = watching
    events = run(seeded_conn, embedder, chat_model, "What is the capital of France?", gate=gate)
    assert [e.kind for e in events] == ["sources", "token", "done"]
    assert events[0].data == [] and events[1].data == NO_ANSWER
    done = events[2].data
    assert not done["answered"] and not gate_taken.is_set()
    assert done["relevance"]["similarity"] < done["relevance"]["min_score"]


def test_follow_up_question_uses_previous_turns(seeded_conn, embedder):
    history = [{"role": "user", "content": "What is uv?"},
               {"role": "assistant", "content": "A Python package and project manager [1]."}]
    follow_up = "and how do I install it?"
    alone = search_passages(seeded_conn, embedder, follow_up, 3)
    together = search_passages(seeded_conn, embedder, retrieval_query(follow_up, history), 3)
    assert not any(h.source.startswith("uv/") for h in alone)
    assert all(h.source.startswith("uv/") for h in together)
    assert retrieve_for(seeded_conn, embedder, follow_up, history, Options(k=3)) == together


def test_new_topic_in_a_conversation_is_searched_on_its_own(seeded_conn, embedder):
    history = [{"role": "user", "content": WAL_QUESTION},
               {"role": "assistant", "content": "Run PRAGMA journal_mode=wal [1]."}]
    question = "What is a recursive CTE in SQLite?"
    hits = retrieve_for(seeded_conn, embedder, question, history, Options(k=3))
    assert hits[0].source == "sqlite/simple-recursive-cte.md"
    assert hits == search_passages(seeded_conn, embedder, question, 3)


def test_stop_ends_generation_and_frees_the_model(seeded_conn, embedder, chat_model):
    gate = Gate()
    seen = []
    stop = threading.Event()
    for event in answer(WAL_QUESTION, [], db=seeded_conn, embedder=embedder, model=chat_model,
                        gate=gate, options=Options(max_answer_tokens=200),
                        should_stop=stop.is_set):
        seen.append(event)
        if event.kind == "token" and sum(e.kind == "token" for e in seen) == 3:
            stop.set()
    assert seen[-1].kind == "done" and seen[-1].data["stopped"]
    assert seen[-1].data["tokens"] == 3
    assert not gate.busy


def test_closing_the_stream_frees_the_model(seeded_conn, embedder, chat_model):
    gate = Gate()
    stream = answer(WAL_QUESTION, [], db=seeded_conn, embedder=embedder, model=chat_model,
                    gate=gate, options=Options(max_answer_tokens=200))
    for event in stream:
        if event.kind == "token":
            break
    assert gate.busy
    stream.close()  # what the web server does when the client disconnects
    assert not gate.busy


def test_second_question_is_told_it_is_queued(seeded_conn, embedder, chat_model):
    gate = Gate()
    first = answer(WAL_QUESTION, [], db=seeded_conn, embedder=embedder, model=chat_model,
                   gate=gate, options=Options(max_answer_tokens=200))
    next(e for e in first if e.kind == "token")  # the first question holds the model
    events = []

    def ask_second():
        for event in answer("How do I run a script with uv?", [], db=seeded_conn,
                            embedder=embedder, model=chat_model, gate=gate,
                            options=Options(max_answer_tokens=32)):
            events.append(event)

    second = threading.Thread(target=ask_second)
    second.start()
    deadline = time.time() + 30
    while not any(e.kind == "queued" for e in events) and time.time() < deadline:
        time.sleep(0.1)
    # Sources and the quick answer come at once; then the place in the queue.
    assert [e.kind for e in events[:3]] == ["sources", "quick", "queued"]
    assert events[2].data == {"position": 1}
    first.close()
    second.join(timeout=120)
    kinds = [e.kind for e in events]
    assert kinds[-1] == "done" and "token" in kinds
    assert not gate.busy
