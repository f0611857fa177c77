"""Answer quality: do answers state what the posts say, and cite them?

60 reader questions about the shared posts (bench/answer_questions.json: paraphrased,
each with 1-3 key facts copied from its post, any one of which a right answer contains)
and 15 off-topic ones, split into "tune" (what settings were chosen on) and "holdout"
(looked at only to report). The 282 posts are ingested once into
/tmp/ragserver-bench/answers.db by the real pipeline.

    python bench/answer_quality.py retrieval [--split tune]
    python bench/answer_quality.py answers --model qwen-coder-0.5b [--split tune]
        [--label NAME] [--set name=value ...] [--limit N]
    python bench/answer_quality.py report       # docs/answer-quality.md from the results

`retrieval` measures, per ranking, whether the first passage (or the first 3, 6) holds
a key fact, and the relevance gate's similarity for on- and off-topic questions.
`answers` runs ragserver's own answer pipeline (ragserver.answer.answer, the code behind
/api/ask, the chat page and `ragserver ask`) with the model in its own process, and
measures for every question: the quick answer (key fact, time to it), the generated
answer (key fact, right post cited, citations of no source, sentences the grounding
check marks unsupported, refused), time to first token and tokens/s. `--set` changes
an answer option (see ragserver.answer.Options) for an experiment. Every run is kept
in bench/answer_results.json under its label; `./run bench answers` runs the default
configuration on every question with each installed model and rewrites the report.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from common import CORPUS, ROOT, Section, machine, table  # noqa: E402

QUESTIONS = HERE / "answer_questions.json"
RESULTS = HERE / "answer_results.json"
DOC = ROOT / "docs" / "answer-quality.md"
WORK = Path("/tmp/ragserver-bench")
BASE_URL = "https://til.example/"


def load_questions(split: str = "all") -> tuple[list[dict], list[dict]]:
    """(on-topic, off-topic) questions of a split: tune, holdout or all."""
    data = json.loads(QUESTIONS.read_text())
    keep = lambda q: split == "all" or q["split"] == split  # noqa: E731
    return [q for q in data["questions"] if keep(q)], [q for q in data["off_topic"] if keep(q)]


def normalize(text: str) -> str:
    return " ".join(text.lower().replace("`", "").split())


def has_fact(text: str, facts: list[str]) -> bool:
    """Whether the text states one of the key facts (case and spacing ignored)."""
    flat = normalize(text)
    return any(normalize(f) in flat for f in facts)


def corpus_db() -> Path:
    """All 282 posts, ingested once by the real pipeline."""
    path = WORK / "answers.db"
    if path.exists():
        return path
    from ragserver.ingest.pipeline import Ingester
    from ragserver.ingest.sources import open_source
    from ragserver.storage import open_storage
    from ragserver.embedder import SentenceTransformerEmbedder

    WORK.mkdir(parents=True, exist_ok=True)
    partial = WORK / "answers.db.partial"
    partial.unlink(missing_ok=True)
    conn = open_storage(partial, create=True)  # torch before sqlite-vss (bench/load_order.py)
    embedder = SentenceTransformerEmbedder("sentence-transformers/all-MiniLM-L6-v2", "", "")
    posts = WORK / "answer-posts"
    shutil.rmtree(posts, ignore_errors=True)
    shutil.copytree(CORPUS, posts, ignore=shutil.ignore_patterns("LICENSE"))
    Ingester(conn, embedder).run([open_source(str(posts), base_url=BASE_URL)])
    conn.close()
    partial.rename(path)
    return path


def open_corpus():
    from ragserver.config import load_settings
    from ragserver.storage import open_storage
    from ragserver.embedder import CachedQueries, load_embedder

    settings = load_settings(db=str(corpus_db()))
    conn = open_storage(settings.database, readonly=True)
    return settings, conn, CachedQueries(load_embedder(settings))


# -- retrieval --------------------------------------------------------------

def measure_retrieval(split: str) -> dict:
    """Per ranking: key fact in passage 1 / top 3 / top 6, right post first; the gate."""
    from ragserver.retrieve import MODES, retrieve

    settings, conn, embedder = open_corpus()
    questions, off_topic = load_questions(split)
    found: dict[str, dict] = {}
    for mode in [m for m in MODES if m != "keyword"] + ["keyword"]:
        counts = {"fact@1": 0, "fact@3": 0, "fact@6": 0, "post@1": 0, "post@6": 0}
        for q in questions:
            hits = retrieve(conn, embedder, q["question"], 6, mode=mode)
            counts["fact@1"] += any(has_fact(h.text, q["facts"]) for h in hits[:1])
            counts["fact@3"] += any(has_fact(h.text, q["facts"]) for h in hits[:3])
            counts["fact@6"] += any(has_fact(h.text, q["facts"]) for h in hits[:6])
            counts["post@1"] += bool(hits) and hits[0].source == q["post"]
            counts["post@6"] += any(h.source == q["post"] for h in hits)
        found[mode] = counts
    gate = {}
    for name, group in (("on_topic", questions), ("off_topic", off_topic)):
        gate[name] = sorted(round(max((h.similarity or 0) for h in
                                      retrieve(conn, embedder, q["question"], 6, mode="vector")), 3)
                            for q in group)
    conn.close()
    return {"split": split, "questions": len(questions), "rankings": found, "gate": gate,
            "min_score": settings.min_score}


def retrieval_markdown(result: dict) -> str:
    n = result["questions"]
    rows = [[mode, *(f"{c[key]}/{n}" for key in ("fact@1", "fact@3", "fact@6", "post@1", "post@6"))]
            for mode, c in result["rankings"].items()]
    on, off = result["gate"]["on_topic"], result["gate"]["off_topic"]
    return "\n\n".join([
        table(["ranking", "key fact in passage 1", "in the first 3", "in the first 6",
               "right post first", "right post in 6"], rows),
        f"Relevance gate (cosine similarity of the question to its closest passage): "
        f"on-topic questions lowest {on[0]:.3f}, median {statistics.median(on):.3f}; "
        f"off-topic highest {off[-1]:.3f}, median {statistics.median(off):.3f}. With the gate "
        f"at {result['min_score']} (RAGSERVER_MIN_SCORE when this was measured), on-topic "
        f"questions below it: {sum(s < result['min_score'] for s in on)}; off-topic ones at "
        f"or above it: {sum(s >= result['min_score'] for s in off)}."])


# -- answers ----------------------------------------------------------------

def run_answers(model_name: str, split: str, overrides: dict, limit: int | None) -> dict:
    """Every question of the split through ragserver's answer pipeline."""
    from ragserver.answer import Options, answer
    from ragserver.config import load_settings
    from ragserver.gate import Gate
    from ragserver.llm import load_chat_model

    settings, conn, embedder = open_corpus()
    settings = load_settings(db=str(settings.database), llm_model=model_name)
    options = Options.from_settings(settings, **overrides)
    model = load_chat_model(settings, serving=False)
    questions, off_topic = load_questions(split)
    asked = [(q, True) for q in questions] + [(q, False) for q in off_topic]
    if limit:
        asked = asked[:limit]
    records = []
    try:
        if model is not None:
            model.count_tokens("load")
        for q, on_topic in asked:
            started = time.perf_counter()
            record = {"id": q["id"], "on_topic": on_topic, "tokens": "", "quick": None}
            for event in answer(q["question"], [], db=conn, embedder=embedder, model=model,
                                gate=Gate(), options=options):
                now = time.perf_counter() - started
                if event.kind == "sources":
                    record["sources"] = [s["source"] for s in event.data]
                    record["source_texts"] = [s["text"] for s in event.data]
                elif event.kind == "quick":
                    record["quick"] = event.data["text"]
                    record["quick_n"] = event.data["n"]
                    record["quick_s"] = now
                elif event.kind == "token":
                    record["tokens"] += event.data
                elif event.kind == "checked":
                    record["checked"] = event.data
                elif event.kind == "done":
                    record["done"] = event.data
                elif event.kind == "error":
                    record["error"] = event.data["message"]
            records.append(score(record, q if on_topic else None))
            print(f"{q['id']}: {summary_line(records[-1])}", file=sys.stderr, flush=True)
    finally:
        conn.close()
        if model is not None and hasattr(model, "close"):
            model.close()
    return {"model": model_name, "split": split, "overrides": overrides,
            "options": options.as_dict(), "records": records, "machine": machine()}


def score(record: dict, question: dict | None) -> dict:
    """The measures of one answer."""
    from ragserver.grounding import cited_in

    done = record.get("done", {})
    checked = record.get("checked") or {}
    text = checked.get("text", record["tokens"])
    sources = record.get("sources", [])
    record["refused"] = not done.get("answered", False) if done else True
    record["text"] = text
    record["ttft_s"] = (done.get("ttft_ms") or 0) / 1000 or None
    record["tokens_per_s"] = done.get("tokens_per_s")
    record["unsupported"] = checked.get("unsupported", 0)
    record["judged"] = checked.get("judged", 0)
    record["removed_citations"] = len(checked.get("removed_citations", []))
    # Runs without the grounding checks (the code before them): citations read from the text.
    record["unmarked_code"] = unmarked_code(checked, record.pop("source_texts", []))
    record["cited"] = checked.get("cited") if checked else sorted(cited_in(text))
    if question is not None:
        record["fact"] = has_fact(text, question["facts"])
        record["quick_fact"] = bool(record["quick"]) and has_fact(record["quick"],
                                                                  question["facts"])
        record["post_in_sources"] = question["post"] in sources
        record["cites_post"] = any(0 < n <= len(sources) and sources[n - 1] == question["post"]
                                   for n in record["cited"])
    return record


def unmarked_code(checked: dict, sources: list[str]) -> list[str]:
    """Commands and code lines of the checked answer that stand in no source yet are not
    marked unsupported: what the grounding check must never let through."""
    from ragserver.grounding import FENCE, INLINE_CODE, normalize

    flat = [normalize(t) for t in sources]
    found = []
    for segment in checked.get("segments", []):
        if segment["supported"] is False:
            continue
        if segment["kind"] == "code":
            body = FENCE.match(segment["text"])
            pieces = (body.group(1) if body else segment["text"]).splitlines()
        else:
            pieces = INLINE_CODE.findall(segment["text"])
        for piece in pieces:
            line = normalize(piece)
            if len(line) >= 3 and not line.startswith(("#", "//")) and \
                    not any(line in source for source in flat):
                found.append(piece)
    return found


def summary_line(r: dict) -> str:
    if not r["on_topic"]:
        return f"off-topic, {'refused' if r['refused'] else 'ANSWERED'}"
    return (f"fact {'yes' if r['fact'] else 'no'}, quick {'yes' if r['quick_fact'] else 'no'}, "
            f"cites post {'yes' if r['cites_post'] else 'no'}, unsupported {r['unsupported']}/"
            f"{r['judged']}, ttft {r['ttft_s'] or 0:.1f}s")


def summarize(run: dict) -> dict:
    """The figures of a run."""
    on = [r for r in run["records"] if r["on_topic"]]
    off = [r for r in run["records"] if not r["on_topic"]]
    answered = [r for r in on if not r["refused"]]
    quick_s = [r["quick_s"] for r in run["records"] if r.get("quick_s")]
    ttft = [r["ttft_s"] for r in answered if r["ttft_s"]]
    rates = [r["tokens_per_s"] for r in answered if r["tokens_per_s"]]
    judged = sum(r["judged"] for r in answered)
    return {
        "questions": len(on), "off_topic": len(off),
        "fact": sum(r["fact"] for r in on), "quick_fact": sum(r["quick_fact"] for r in on),
        "fact_either": sum(r["fact"] or r["quick_fact"] for r in on),
        "cites_post": sum(r["cites_post"] for r in on),
        "cites_anything": sum(bool(r["cited"]) for r in answered),
        "removed_citations": sum(r["removed_citations"] for r in answered),
        "added_citations": sum((r.get("checked") or {}).get("added_citations", 0)
                               for r in answered),
        "looped": sum(bool((r.get("checked") or {}).get("looped")) for r in answered),
        "unmarked_code": sum(len(r.get("unmarked_code") or []) for r in answered),
        "unsupported": sum(r["unsupported"] for r in answered), "judged": judged,
        "answers_with_unsupported": sum(r["unsupported"] > 0 for r in answered),
        "post_in_sources": sum(r["post_in_sources"] for r in on),
        "off_topic_refused": sum(r["refused"] for r in off),
        "on_topic_refused": sum(r["refused"] for r in on),
        "quick_p50_ms": round(statistics.median(quick_s) * 1000) if quick_s else None,
        "ttft_p50_s": round(statistics.median(ttft), 2) if ttft else None,
        "tokens_per_s": round(statistics.median(rates), 1) if rates else None,
    }


SUMMARY_HEADERS = ["run", "model", "split", "key fact in answer", "in quick answer",
                   "in either", "cites right post", "cites anything", "citations of no source",
                   "citations added", "unsupported sentences", "loops cut", "off-topic refused",
                   "on-topic refused", "quick answer p50", "first token p50", "tokens/s"]


def summary_row(label: str, run: dict) -> list:
    s = summarize(run)
    n, off = s["questions"], s["off_topic"]
    return [label, run["model"], run["split"], f"{s['fact']}/{n}", f"{s['quick_fact']}/{n}",
            f"{s['fact_either']}/{n}",
            f"{s['cites_post']}/{n}", f"{s['cites_anything']}/{n - s['on_topic_refused']}",
            s["removed_citations"], s["added_citations"], f"{s['unsupported']}/{s['judged']}",
            s["looped"], f"{s['off_topic_refused']}/{off}", f"{s['on_topic_refused']}/{n}",
            f"{s['quick_p50_ms']} ms" if s["quick_p50_ms"] is not None else "–",
            f"{s['ttft_p50_s']} s" if s["ttft_p50_s"] else "–", s["tokens_per_s"] or "–"]


def stored() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def keep(label: str, value: dict) -> None:
    results = stored()
    results[label] = value
    RESULTS.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")


# -- report -----------------------------------------------------------------

def write_report() -> str:
    """docs/answer-quality.md from every kept run, in the order they were made."""
    results = stored()
    runs = {k: v for k, v in results.items() if "records" in v}
    parts = [DOC_INTRO]
    if "retrieval" in results:
        parts += ["## Retrieval for answers", RETRIEVAL_INTRO,
                  retrieval_markdown(results["retrieval"])]
    parts += ["## Answers", ANSWERS_INTRO,
              table(SUMMARY_HEADERS, [summary_row(k, v) for k, v in runs.items()]),
              "Each run's note and the answer options it ran with "
              "(ragserver.answer.Options; the prompt and the quick answer's scoring are in "
              "the notes):",
              "\n".join(f"- **{label}**: {run.get('note', '')} options: "
                        f"`{json.dumps(run['options'], sort_keys=True)}`"
                        for label, run in runs.items())]
    parts += [NOTES] if NOTES else []
    DOC.write_text("\n\n".join(parts) + "\n")
    return "\n\n".join(parts)


DOC_INTRO = """---
title: Answer quality
tags: [benchmarks, answers, measurements]
---

`python bench/answer_quality.py` measures whether ragserver's answers state what the
posts say and cite them, on 60 reader questions about the 282 shared posts (40 to tune
on, 20 held out) and 15 off-topic questions (bench/answer_questions.json). A question
counts as answered with its key fact when the answer contains one of the strings copied
from its post (case and spacing ignored)."""

RETRIEVAL_INTRO = """Which passages the answer is written from, by ranking (k = 6): does the
first passage, or one of the first 3 or 6, contain a key fact? Measured by
`python bench/answer_quality.py retrieval`."""

ANSWERS_INTRO = """Each run asks every question of its split through `ragserver.answer.answer`
(what /api/ask, the chat page and `ragserver ask` run), the model in its own process on
this 2-core machine. "Cites right post": the answer cites, by its [n], a source from the
question's post. "Citations of no source": [n] beyond the sources the model was given
(removed before the reader sees the answer). "Unsupported sentences": sentences and code
blocks the grounding check marks, over those it judged."""

NOTES = """## The default configuration against main before this work

Both on all 60 questions and 15 off-topic ones (the runs "before: main at 70bbdcd, all"
and "default, qwen-coder-0.5b, all questions" above; split by the questions' split):

| measure | before: SmolLM2, no checks | now: Qwen2.5-Coder-0.5B, checks, quick answer |
|---|---|---|
| key fact in the generated answer, tune questions | 10/40 | 27/40 (2.7×) |
| key fact in the generated answer, held-out questions | 3/20 | 13/20 (4.3×) |
| key fact in the generated answer, all questions | 13/60 | 40/60 (3.1×) |
| key fact in the answer or in the quick answer above it | 13/60 | 46/60 (3.5×) |
| the answer cites the right post | 1/60 | 42/60 |
| commands or code not in the sources left unmarked | (no check) | 0, in 60 answers |
| off-topic questions refused | 12/15 | 15/15 |
| on-topic questions refused | 0/60 | 0/60 |
| quick answer, p50 from the question | – | 145 ms |
| first token, p50 | 2.88 s | 2.82 s |

The 4× of the goal is reached on the held-out questions (13 against 3) and not on the
tune questions (27 against 10) or on all 60 (40 against 13, 3.1×): the old default did
better on the tune questions than on the held-out ones. The issue that asked for this
work measured the old default at 7 of 48 (15%) on its own held-out questions; 40 of 60
is 67%. "Left unmarked" was counted by `unmarked_code()` in this file: every inline
command and code line of an answer that stands in none of its sources and is not inside
a segment marked unsupported.

## What each change did

Measured on the 40 tune questions (and 10 off-topic ones); the held-out questions were
only run with the configuration chosen. Kept:

- **Qwen2.5-Coder-0.5B as the default model.** With the same configuration, against
  SmolLM2-135M: key fact 26 against 5 of 40, right post cited 32 against 11, unsupported
  sentences 51% against 86% of those judged, at 42 against 107 tokens/s and a first token
  after 3.3 s against 2.6 s. SmolLM2 stays available (`RAGSERVER_LLM_MODEL=smollm2`) for
  machines where speed matters more than the answer.
- **The relevance gate at 0.45** (was 0.40). The closest passage of an on-topic tune
  question scored at least 0.495; off-topic questions at most 0.439, and three of them
  (a Rust web server, a Jenkinsfile, a Terraform module) scored above 0.40, so the old
  gate let them through: the run of main before this work refused 12 of 15. At 0.45 all
  off-topic questions are refused and no on-topic one is (the lowest held-out on-topic
  question scored 0.476). The gate compares the cosine similarity of the question to its
  closest passage; every answer's `done` event reports it (`relevance`).
- **Vector ranking for answers** (the search page keeps hybrid). Key fact in the first
  passage: 16 of 40 by vector, 14 by hybrid, 13 by keywords; in the first six: 36, 34,
  29 (the table above). Hybrid finds posts by their title better (search-quality.md),
  but the passage that holds the answer first less often.
- **The quick answer's scoring**: cosine similarity to the question, plus 0.25 when the
  sentence or block holds code, minus 0.02 per rank of its passage, over the six passages
  (was similarity plus shared words over three): key fact quoted 19 of 40 (was 9), held
  out 10 of 20 (was 8). Posts state their problem first in the reader's own words ("I
  wanted to ..."), which similarity alone picked; the answer is usually the command
  that follows.
- **Completing citations**: a sentence the check finds in the sources, but which the
  model left uncited, gets the source that holds most of it. Right post cited 2 of 40
  before, 32 of 40 after, the same answers otherwise (key fact 26 of 40 both).
- **The prompt** asks to copy commands, options and settings exactly, in backticks, and
  never to make one up (every Qwen run here).
- **Greedy sampling without a repeat penalty** (temperature 0 and repeat_penalty 1.0;
  every run before it used 0.2 and 1.2): key fact 27 of 40 against 26, unsupported
  sentences 81 of 159 against 102 of 199, no loop cut, and the same answer to the same
  question every time. A repeat penalty works against copying a command whose parts
  repeat; the loop guard does its job instead.

Dropped:

- **A reminder after the sources** ("Answer from the sources above ... end each sentence
  with [n]"), where a small model looks last. With each source also labelled [n]: right
  post cited 40 of 40, but the key fact fell to 22 of 40 and answers began with "[1]" and
  pasted whole sources. Without the labels the model answered "[1] [2]" and stopped:
  key fact 8 of 40.
- **Windows of each passage around its best sentence** (600 characters) instead of whole
  passages: key fact 26 of 40 as before, first token 3.18 s against 3.30 s. The passages
  here average about 300 characters, so a window rarely leaves anything out; at 250
  characters the key fact left the prompt for 4 of 40 questions.
- **The best passage last**, next to the question (sources in reverse rank order, the
  best still numbered [1]), where small models are said to look most: key fact 22 of 40
  against 26.
- **Four passages instead of six** (with greedy sampling): key fact 24 of 40 against 27,
  for a first token after 2.24 s against 3.18 s. The key fact is in the first four
  passages less often than in the first six (retrieval table above).
- **The quick answer's quote repeated in the prompt**, after the sources and before the
  question ("Most relevant, from [n]: ..."): key fact 25 of 40 against 27. Of the 19
  questions whose quote held the key fact, the answer stated it 14 times with the quote
  in the prompt and 15 without; of the other 21, 11 and 12 times.

## What a bigger model buys

Only the two models that install offline were measured: from 135M to 0.5B parameters
the key fact went from 9 to 40 of 60 questions and unsupported sentences from 81% to 48%
(the default runs above), for 2.5 times slower generation. Larger GGUF files were not available on this
machine, so what they add here is not measured; `RAGSERVER_LLM_MODEL=/path/to/file.gguf`
uses one, and `python bench/answer_quality.py answers --model /path/to/file.gguf
--split all` measures it on your posts' questions the same way.

## What the numbers do not say

The key-fact test is a substring match: an answer that states the fact in other words
counts as missing it, and one that quotes the fact while saying something wrong around
it counts as right. The grounding check judges prose by shared words (half of a
sentence's content words must stand in the sources) and code line by line (every line
must), so general knowledge the sources do not contain is marked too, and a sentence
that recombines the sources' words wrongly is not."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["retrieval", "answers", "report"])
    parser.add_argument("--model", default="qwen-coder-0.5b")
    parser.add_argument("--split", default="tune", choices=["tune", "holdout", "all"])
    parser.add_argument("--label")
    parser.add_argument("--note", default="")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--limit", type=int)
    args = parser.parse_args()
    if args.what == "retrieval":
        result = measure_retrieval(args.split)
        keep("retrieval", result)
        print(retrieval_markdown(result))
    elif args.what == "answers":
        overrides = {}
        for item in args.set:
            name, _, value = item.partition("=")
            literal = re.match(r"^[\d.\-]+$|^(true|false)$", value)
            overrides[name] = json.loads(value) if literal else value
        run = run_answers(args.model, args.split, overrides, args.limit)
        run["note"] = args.note
        label = args.label or f"{args.model} {args.split} {time.strftime('%H:%M')}"
        keep(label, run)
        print(table(SUMMARY_HEADERS, [summary_row(label, run)]))
    write_report()


def run(quick: bool) -> Section:
    """`./run bench answers`: the default configuration with each model, every question."""
    rows = []
    for model in ("qwen-coder-0.5b", "smollm2", "none"):
        label = f"default, {model}, all questions"
        result = run_answers(model, "all", {}, 10 if quick else None)
        result["note"] = "the default configuration"
        keep(label, result)
        rows.append(summary_row(label, result))
    write_report()
    return Section("Answer quality", "\n\n".join([
        "Every question of bench/answer_questions.json through the answer pipeline with "
        "the default configuration; docs/answer-quality.md has every experiment.",
        table(SUMMARY_HEADERS, rows)]), {})


if __name__ == "__main__":
    main()
