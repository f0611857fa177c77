"""Answer generation: time to first token and tokens/s, ragserver beside raw llama-cpp-python.

One question about the sqlite posts (ingested into a temporary database), answered with
the same GGUF, the same prompt (captured from `ragserver.answer.answer` itself), thread
count, token limit and sampling settings (ragserver.llm.SAMPLING, as ragserver's
LocalChatModel) four ways, interleaved in every repeat:

- raw: `llama_cpp.Llama.create_chat_completion(stream=True)` in this process;
- server: `POST /api/ask` to gunicorn started from the Procfile; TTFT from sending the
  request to the first `token` event, plus the server's own `done` timings;
- CLI: `ragserver ask --json` in a fresh process; TTFT from process start to the first
  token line, and the `done` event's ttft_ms, which excludes start-up and model loads;
- raw script: a fresh process doing only what the raw run does, the CLI's baseline.

llama.cpp reuses the cached prefix of the previous prompt, so a repeated question would
skip prompt evaluation: before each measured raw and server answer, both answer another
question first, as a server between two different questions does. Tokens/s counts the
tokens after the first over the time from first to last token; SmolLM2 may stop early.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import COMPARE_HEADERS, CORPUS, Figure, Section, compare, table
from ragserver.llm import SAMPLING
from tests.server import Server

QUESTION = "How do I enable WAL mode for a SQLite database?"
OTHER = "How do I compile SQLite on Ubuntu?"  # asked in between, so no prompt is cached
TOPIC = "sqlite"

OLD_SAMPLING = {"temperature": 0.2, "repeat_penalty": 1.2}  # results kept before it was stored


def sampling_text(sampling: dict) -> str:
    """How a run sampled, for the report."""
    if not sampling["temperature"]:
        return f"greedy, repeat penalty {sampling['repeat_penalty']}"
    return (f"temperature {sampling['temperature']}, repeat penalty "
            f"{sampling['repeat_penalty']}, no fixed seed")


RAW_SCRIPT = r"""
import json, sys, time
from llama_cpp import Llama
path, (context, threads, batch_threads, max_tokens) = sys.argv[1], map(int, sys.argv[2:6])
sampling = json.loads(sys.argv[6])
messages = json.loads(sys.stdin.read())
llama = Llama(model_path=path, n_ctx=context, n_threads=threads, n_threads_batch=batch_threads,
              verbose=False)
asked, first = time.perf_counter(), None
for chunk in llama.create_chat_completion(messages=messages, max_tokens=max_tokens,
                                          stream=True, **sampling):
    piece = chunk["choices"][0]["delta"].get("content")
    if piece:
        first = first or time.perf_counter()
        print(json.dumps({"event": "token", "data": {"text": piece}}), flush=True)
print(json.dumps({"event": "done", "data": {"ttft_ms": (first - asked) * 1000}}), flush=True)
"""


@dataclass
class Run:
    """One answer as its reader saw it."""
    ttft: float  # seconds from the start to the first token
    tokens: int
    rate: float  # tokens/s after the first
    done: dict = field(default_factory=dict)  # ragserver's own done event
    sources: list = field(default_factory=list)
    sources_at: float = 0.0  # seconds from the start to the sources event


def measure(events, started: float) -> Run:
    """Time a stream of (kind, data) events: the same events from every path."""
    first = last = None
    tokens, run = 0, Run(0, 0, 0)
    for kind, data in events:
        now = time.perf_counter()
        if kind == "token":
            first, last, tokens = first or now, now, tokens + 1
        elif kind == "sources":
            run.sources, run.sources_at = data, now - started
        elif kind == "done":
            run.done = data
        elif kind == "error":
            raise RuntimeError(f"answer failed: {data}")
    if first is None:
        raise RuntimeError("the answer had no tokens")
    run.ttft, run.tokens = first - started, tokens
    run.rate = (tokens - 1) / (last - first) if tokens > 1 else float("nan")
    return run


class PromptRecorder:
    """A chat model that keeps the messages ragserver builds and answers nothing."""

    def __init__(self, model):
        self.model, self.name, self.context_size = model, model.name, model.context_size
        self.messages = None

    def count_tokens(self, text: str) -> int:
        return self.model.count_tokens(text)

    def stream(self, messages, max_tokens):
        self.messages = messages
        yield from ()


def ragserver_prompt(question: str, settings, conn, embedder, tokenizer) -> tuple[list, list]:
    """(messages, passage ids) exactly as ragserver would send them to the model."""
    from ragserver.answer import Options, answer
    from ragserver.gate import Gate

    recorder = PromptRecorder(tokenizer)
    events = list(answer(question, [], db=conn, embedder=embedder, model=recorder, gate=Gate(),
                         options=Options.from_settings(settings)))
    ids = [s["passage_id"] for e in events if e.kind == "sources" for s in e.data]
    return recorder.messages, ids


def raw_events(llama, messages, max_tokens: int):
    """Token events from llama-cpp-python, with ragserver's sampling settings."""
    for chunk in llama.create_chat_completion(messages=messages, max_tokens=max_tokens,
                                              stream=True, **SAMPLING):
        piece = chunk["choices"][0]["delta"].get("content")
        if piece:
            yield "token", piece


def sse_events(url: str, question: str):
    """(event, data) pairs of a POST /api/ask, read as they arrive."""
    host = url.removeprefix("http://")
    conn = http.client.HTTPConnection(host, timeout=300)
    conn.request("POST", "/api/ask", json.dumps({"question": question}),
                 {"Content-Type": "application/json"})
    response = conn.getresponse()
    kind = None
    for raw in response:
        line = raw.decode("utf-8").rstrip("\r\n")
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: ") and kind:
            data = json.loads(line.removeprefix("data: "))
            yield kind, data.get("sources", data) if kind == "sources" else data
    conn.close()


def process_events(command: list[str], env: dict, stdin: str = ""):
    """(event, data) pairs from a process printing one JSON event per line."""
    proc = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    proc.stdin.write(stdin)
    proc.stdin.close()
    for line in proc.stdout:
        event = json.loads(line)
        yield event["event"], event["data"]
    if proc.wait():
        raise RuntimeError(f"{command[0]} exited with {proc.returncode}")


def answer_all(quick: bool, tmp: Path) -> dict:
    """Every path's runs, interleaved, plus what was asked and how."""
    from ragserver.ingest.pipeline import Ingester
    from ragserver.ingest.sources import open_source
    from llama_cpp import Llama

    from ragserver.config import load_settings
    from ragserver.storage import open_storage
    from ragserver.embedder import load_embedder
    from ragserver.llm import load_chat_model, resolve_gguf

    max_tokens, repeats = (64, 2) if quick else (128, 5)
    settings = load_settings(db=str(tmp / "bench.db"), max_answer_tokens=max_tokens)
    conn = open_storage(settings.database, create=True)
    embedder = load_embedder(settings)
    Ingester(conn, embedder, commit_rows=settings.commit_rows).run(
        [open_source(str(CORPUS / TOPIC))])
    tokenizer = load_chat_model(settings)
    messages, passage_ids = ragserver_prompt(QUESTION, settings, conn, embedder, tokenizer)
    other, _ = ragserver_prompt(OTHER, settings, conn, embedder, tokenizer)
    conn.close()

    gguf = resolve_gguf(settings.llm_model)
    threads, batch_threads = settings.llm_thread_counts  # what ragserver's model process uses
    llama = Llama(model_path=str(gguf), n_ctx=settings.llm_context, n_threads=threads,
                  n_threads_batch=batch_threads, verbose=False)
    env = {**os.environ, "RAGSERVER_DB": str(settings.database),
           "RAGSERVER_MAX_ANSWER_TOKENS": str(max_tokens)}
    cli = [str(Path(sys.executable).parent / "ragserver"), "ask", "--json", QUESTION]
    script = [sys.executable, "-c", RAW_SCRIPT, str(gguf), str(settings.llm_context),
              str(threads), str(batch_threads), str(max_tokens), json.dumps(SAMPLING)]

    def timed_events(events_from, *args) -> Run:
        started = time.perf_counter()
        return measure(events_from(*args), started)

    runs = {"raw": [], "server": [], "cli": [], "raw_script": [], "raw_cached": [],
            "server_cached": []}
    with Server(settings.database, {"RAGSERVER_MAX_ANSWER_TOKENS": str(max_tokens)}) as server:
        server.search("warm up")  # loads the embedding model
        url = server.url
        warm = timed_events(raw_events, llama, messages, max_tokens)  # loads the model
        prompt_tokens = llama.n_tokens - warm.tokens  # what llama.cpp evaluated, ±1
        timed_events(sse_events, url, OTHER)
        for _ in range(repeats):
            timed_events(raw_events, llama, other, max_tokens)
            runs["raw"].append(timed_events(raw_events, llama, messages, max_tokens))
            runs["raw_cached"].append(timed_events(raw_events, llama, messages, max_tokens))
            timed_events(sse_events, url, OTHER)
            runs["server"].append(timed_events(sse_events, url, QUESTION))
            runs["server_cached"].append(timed_events(sse_events, url, QUESTION))
            runs["cli"].append(timed_events(process_events, cli, env))
            runs["raw_script"].append(timed_events(process_events, script, env,
                                                   json.dumps(messages)))
    same_prompt = all([s["passage_id"] for s in r.sources] == passage_ids
                      for r in runs["server"] + runs["cli"])
    return {"runs": runs, "max_tokens": max_tokens, "repeats": repeats, "model": gguf.name,
            "threads": llama.n_threads, "threads_batch": llama.n_threads_batch,
            "sampling": SAMPLING,
            "passages": len(passage_ids), "prompt_tokens": prompt_tokens,
            "same_prompt": same_prompt}


def run(quick: bool) -> Section:
    with tempfile.TemporaryDirectory(prefix="ragserver-bench-") as tmp:
        result = answer_all(quick, Path(tmp))
    runs = result["runs"]

    def figure(name: str, unit: str, path: str, value) -> Figure:
        return Figure(name, unit, [value(r) for r in runs[path]])

    def ms(seconds: float) -> float:
        return seconds * 1000

    raw_rate = figure("raw llama-cpp-python", "tokens/s", "raw", lambda r: r.rate)
    raw_ttft = figure("raw llama-cpp-python", "ms", "raw", lambda r: ms(r.ttft))
    server_rate = figure("`POST /api/ask`, client-side", "tokens/s", "server", lambda r: r.rate)
    server_own_rate = figure("`POST /api/ask`, its done event", "tokens/s", "server",
                             lambda r: r.done["tokens_per_s"])
    server_ttft = figure("`POST /api/ask`, request to first token", "ms", "server",
                         lambda r: ms(r.ttft))
    server_own_ttft = figure("`POST /api/ask`, its done event's ttft_ms", "ms", "server",
                             lambda r: r.done["ttft_ms"])
    raw_cached_ttft = figure("raw, same question again", "ms", "raw_cached",
                             lambda r: ms(r.ttft))
    server_cached_ttft = figure("`POST /api/ask`, same question again (prompt cached)", "ms",
                                "server_cached", lambda r: ms(r.ttft))
    script_rate = figure("raw script, fresh process", "tokens/s", "raw_script", lambda r: r.rate)
    script_ttft = figure("raw script, process start to first token", "ms", "raw_script",
                         lambda r: ms(r.ttft))
    script_model_ttft = figure("raw script, prompt to first token", "ms", "raw_script",
                               lambda r: r.done["ttft_ms"])
    cli_rate = figure("`ragserver ask`", "tokens/s", "cli", lambda r: r.rate)
    cli_ttft = figure("`ragserver ask`, process start to first token", "ms", "cli",
                      lambda r: ms(r.ttft))
    cli_model_ttft = figure("`ragserver ask`, its done event's ttft_ms", "ms", "cli",
                            lambda r: r.done["ttft_ms"])
    rows = [compare(server_rate, raw_rate), compare(server_own_rate, raw_rate),
            compare(server_ttft, raw_ttft, 0), compare(server_own_ttft, raw_ttft, 0),
            compare(server_cached_ttft, raw_cached_ttft, 0),
            compare(cli_rate, script_rate), compare(cli_model_ttft, script_model_ttft, 0),
            compare(cli_ttft, script_ttft, 0)]

    def median(path: str, value) -> float:
        return figure("", "", path, value).median

    def goals(rate: Figure, base_rate: Figure, ttft: Figure, base_ttft: Figure) -> str:
        ratio, late = rate.median / base_rate.median, ttft.median - base_ttft.median
        return (f"tokens/s ≥ 0.95× raw: **{'met' if ratio >= 0.95 else 'not met'}** "
                f"({ratio:.2f}×); TTFT within 100 ms of raw: "
                f"**{'met' if late <= 100 else 'not met'}** ({late:+,.0f} ms)")

    tokens = ", ".join(f"{path.replace('_', ' ')} {median(path, lambda r: r.tokens):.0f}"
                       for path in ["raw", "server", "cli", "raw_script"])
    overhead = server_cached_ttft.median - raw_cached_ttft.median
    retrieval_ms = median("server", lambda r: r.done["retrieval_ms"])
    markdown = "\n".join([
        f"The question {QUESTION!r}, answered from the {TOPIC} posts by the packaged "
        f"{result['model']} with the prompt ragserver builds ({result['passages']} passages, "
        f"about {result['prompt_tokens']} tokens; the server and CLI retrieved the same "
        f"passages: {'yes' if result['same_prompt'] else '**no**'}), at most "
        f"{result['max_tokens']} tokens, {result['threads']} thread(s) generating and "
        f"{result['threads_batch']} reading the prompt, ragserver's sampling "
        f"({sampling_text(result.get('sampling', OLD_SAMPLING))}). "
        f"{result['repeats']} repeats after a "
        f"warm-up; raw and server answer another question before each measured one, so "
        f"neither reuses a cached prompt; then both answer the same question again, whose "
        f"prompt llama.cpp has cached, which leaves ragserver's own work in the TTFT. "
        f"Tokens per answer (median): {tokens}.",
        "", table(COMPARE_HEADERS, rows), "",
        f"- Server against raw: {goals(server_rate, raw_rate, server_ttft, raw_ttft)}; with "
        f"the prompt cached: {overhead:+,.0f} ms. Its retrieval took {retrieval_ms:.0f} ms "
        f"(median; the repeated question's vector is cached).",
        f"- CLI against the raw script, prompt to first token: "
        f"{goals(cli_rate, script_rate, cli_model_ttft, script_model_ttft)}. Before its "
        f"sources event (start-up, model loads, retrieval): "
        f"{median('cli', lambda r: r.sources_at):.1f} s (median).",
    ])
    data = {k: v for k, v in result.items() if k != "runs"}
    data.update({path: [{k: v for k, v in vars(r).items() if k != "sources"} for r in path_runs]
                 for path, path_runs in runs.items()})
    return Section("Generation", markdown, data)
