"""Thread counts: llama.cpp and torch with 1 or 2 threads, on an idle machine and beside a
busy neighbour.

On a small server something else always runs beside the model: the embedder, a search,
the cron ingest. So each figure is measured twice: with the machine otherwise idle, and
with a neighbour process spinning on one core (a pure-Python busy loop, one CPU-bound
process, as an ingest or a search would be).

- llama.cpp (raw llama-cpp-python, the packaged SmolLM2 GGUF): time to read a prompt of
  about 600 tokens (real passages of the shared posts in the chat template), with
  n_threads_batch 1 or 2; and generation tokens/s after the first token, with n_threads
  1 or 2 (64 tokens, end-of-text suppressed so every run generates them all). Each run
  starts from an empty KV cache, so nothing is reused.
- torch (the packaged all-MiniLM-L6-v2 through sentence-transformers): one query (what a
  search or a question embeds) and batches of 32 passages (what ingest embeds), with
  torch.set_num_threads 1 or 2.

Every configuration runs in a fresh process, so thread pools never mix; the
configurations are interleaved over the repeats, so a slow spell of a shared machine
hits all of them alike.
"""

from __future__ import annotations

import json
import subprocess
import sys

from common import CORPUS, MODEL, Figure, Section, neighbour, table

THREADS = (1, 2)
PROMPT_TOKENS = 600
GENERATE = 64

LLAMA_SCRIPT = r"""
import json, sys, time
from llama_cpp import Llama
path, threads, batch_threads, repeats, prompt = json.loads(sys.argv[1])
llama = Llama(model_path=path, n_ctx=2048, n_threads=threads, n_threads_batch=batch_threads,
              verbose=False)
tokens = llama.tokenize(prompt.encode(), add_bos=False, special=True)
no_end = {llama.token_eos(): -1e9}
prompt_s, rates = [], []
for _ in range(repeats + 1):  # the first is a warm-up
    llama.reset()
    started, stamps = time.perf_counter(), []
    for _ in llama.create_completion(tokens, max_tokens=%d, temperature=0, logit_bias=no_end,
                                     stream=True):
        stamps.append(time.perf_counter())
    prompt_s.append(stamps[0] - started)
    rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
print(json.dumps({"prompt_tokens": len(tokens), "prompt_s": prompt_s[1:], "rates": rates[1:]}))
""" % GENERATE

TORCH_SCRIPT = r"""
import json, sys, time
sys.path.insert(0, sys.argv[2])
from ragserver.storage.sqlite_connection import connect
connect(":memory:").close()  # torch before sqlite-vss, as ragserver does
import torch
from ragserver.embedder import SentenceTransformerEmbedder
threads, repeats, passages, queries = json.loads(sys.argv[1])
torch.set_num_threads(threads)
embedder = SentenceTransformerEmbedder(%r, "", "", batch_size=32)
embedder.embed_passages(passages)  # warm-up
embedder.embed_query(queries[0])
query_ms, batch_s = [], []
for r in range(repeats):
    started = time.perf_counter()
    for q in queries:
        embedder.embed_query(q)
    query_ms.append((time.perf_counter() - started) / len(queries) * 1000)
    started = time.perf_counter()
    embedder.embed_passages(passages)
    batch_s.append(len(passages) / (time.perf_counter() - started))
print(json.dumps({"query_ms": query_ms, "passages_per_s": batch_s}))
""" % MODEL


def chat_prompt() -> str:
    """About PROMPT_TOKENS tokens of real passages in SmolLM2's chat template."""
    from llama_cpp import Llama

    from ragserver.llm import packaged_gguf

    vocab = Llama(model_path=str(packaged_gguf()), vocab_only=True, verbose=False)
    text = ""
    for post in sorted((CORPUS / "sqlite").glob("*.md")):
        for paragraph in post.read_text().split("\n\n"):
            candidate = f"{text}\n\n{paragraph}" if text else paragraph
            if len(vocab.tokenize(candidate.encode(), add_bos=False)) > PROMPT_TOKENS - 40:
                break
            text = candidate
        else:
            continue
        break
    return ("<|im_start|>system\nAnswer from the sources.<|im_end|>\n<|im_start|>user\n"
            f"Sources:\n{text}\n\nQuestion: How do I enable WAL mode?<|im_end|>\n"
            "<|im_start|>assistant\n")


def passages_and_queries() -> tuple[list[str], list[str]]:
    """32 passages and 10 post titles of the shared corpus."""
    posts = sorted(CORPUS.rglob("*.md"))
    passages = [p for post in posts[:20] for p in post.read_text().split("\n\n")
                if len(p) > 200][:32]
    queries = [post.read_text().split("\n", 1)[0].lstrip("# ") for post in posts[::28]][:10]
    return passages, queries


def run_json(script: str, *args: object) -> dict:
    out = subprocess.run([sys.executable, "-c", script, *map(str, args)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool) -> Section:
    from ragserver.llm import packaged_gguf

    from common import ROOT

    repeats, rounds = (2, 1) if quick else (3, 3)
    gguf = str(packaged_gguf())
    prompt = chat_prompt()
    passages, queries = passages_and_queries()
    results: dict[str, dict[str, list[float]]] = {}

    def add(key: str, name: str, values: list[float]) -> None:
        results.setdefault(key, {}).setdefault(name, []).extend(values)

    prompt_tokens = 0
    for _ in range(rounds):
        for busy in (False, True):
            where = "busy" if busy else "idle"
            with neighbour(busy):
                for n in THREADS:
                    out = run_json(LLAMA_SCRIPT, json.dumps([gguf, n, n, repeats, prompt]))
                    prompt_tokens = out["prompt_tokens"]
                    add(f"llama {n} {where}", "prompt_s", out["prompt_s"])
                    add(f"llama {n} {where}", "rate", out["rates"])
                    out = run_json(TORCH_SCRIPT, json.dumps([n, repeats, passages, queries]),
                                   ROOT)
                    add(f"torch {n} {where}", "query_ms", out["query_ms"])
                    add(f"torch {n} {where}", "passages_per_s", out["passages_per_s"])

    def fig(key: str, name: str, unit: str) -> Figure:
        return Figure(key, unit, results[key][name])

    rows = []
    for what, name, unit, digits, better in [
            ("llama", "prompt_s", "s", 2, "lower"), ("llama", "rate", "tokens/s", 1, "higher"),
            ("torch", "query_ms", "ms", 1, "lower"),
            ("torch", "passages_per_s", "passages/s", 1, "higher")]:
        label = {"prompt_s": f"llama.cpp: read a {prompt_tokens}-token prompt",
                 "rate": f"llama.cpp: generate ({GENERATE} tokens)",
                 "query_ms": "torch: embed one query",
                 "passages_per_s": "torch: embed batches of 32 passages"}[name]
        for n in THREADS:
            idle, busy = fig(f"{what} {n} idle", name, unit), fig(f"{what} {n} busy", name, unit)
            rows.append([label, n, f"{idle.spread(digits)} {unit}", f"{busy.spread(digits)} {unit}",
                         f"{busy.median / idle.median:.2f}×"])
    intro = (f"SmolLM2-135M (Q4_1) and all-MiniLM-L6-v2, each configuration in a fresh "
             f"process; {rounds} round(s) of {repeats} repeats, idle and busy interleaved. "
             "\"Busy\": a Python busy loop holds one of the two cores meanwhile. "
             "Ratio: busy median over idle median.")
    headers = ["work", "threads", "idle min / median / max", "busy neighbour", "busy ÷ idle"]
    data = {key: values for key, values in results.items()}
    data["prompt_tokens"] = prompt_tokens
    return Section("Threads beside a busy neighbour", "\n\n".join([intro, table(headers, rows)]),
                   data)
