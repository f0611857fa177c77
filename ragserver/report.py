"""The owner's report: what readers asked, grouped by meaning; what the blog could not
answer, grouped into themes ("what to write next"); answers marked down; searches that
found nothing; and the posts answers cited most. Built from the activity store by
`ragserver report` and the /admin page alike."""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .activity import Activity, StoredTurn

# Two questions are "the same question" when their vectors are at least this similar, and
# belong to one theme when at least THEME_SIMILARITY. Both are the best adjusted Rand index
# on the tune split of bench/report_grouping.py (hand-written paraphrases and off-topic
# themes; docs/benchmarks.md, "Report grouping"). On holdout, SAME_QUESTION 0.45 scores ARI
# 0.98, pairwise precision 1.00, recall 0.96 (0.80 found 11% of the pairs): readers' own
# wordings of one question sit 0.3-0.8 apart with all-MiniLM-L6-v2, and its mistakes at 0.45
# are different questions about one tool. THEME_SIMILARITY 0.40 is the grid's lowest and
# still groups little (holdout ARI 0.17, precision 0.83, recall 0.11): this model puts
# different questions on one subject no closer than unrelated ones, so themes mostly gather
# repeats of one unanswered question.
SAME_QUESTION = 0.45
THEME_SIMILARITY = 0.40
LOW_MARGIN = 0.05  # answered, but the closest passage was within this of the relevance gate
TOP = 10
EXAMPLES = 3
_CITATION = re.compile(r"\[(\d+)\]")


@dataclass
class Group:
    """Questions that mean the same thing (or share a theme)."""

    questions: list[str]  # distinct wordings: most asked first, then most central
    count: int  # how many times any of them was asked
    ids: list[str]  # answers (turn ids), newest first

    def as_dict(self, examples: int = EXAMPLES) -> dict:
        return {"question": self.questions[0], "count": self.count,
                "wordings": len(self.questions), "examples": self.questions[1:1 + examples],
                "answers": self.ids[:examples]}


def normalise(text: str) -> str:
    """A question's wording for counting repeats: case, spacing and end punctuation aside."""
    return " ".join(text.casefold().split()).rstrip("?!. ")


def group(texts: list[str], ids: list[str], embedder, threshold: float,
          known: dict[str, np.ndarray] | None = None) -> list[Group]:
    """Group texts whose meaning is close: each distinct wording joins the group whose
    first (most asked) wording it is most similar to, if at least `threshold`, else
    starts a group. Most asked wordings go first, so they lead their groups; groups come
    largest first."""
    if not texts:
        return []
    wordings: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        wordings.setdefault(normalise(text), []).append(i)
    keys = sorted(wordings, key=lambda k: (-len(wordings[k]), k))
    firsts = [texts[wordings[k][0]] for k in keys]
    vectors = _embed(embedder, firsts, known or {})
    leaders: list[int] = []  # index into keys of each group's first wording
    members: list[list[int]] = []
    for i in range(len(keys)):
        if leaders:
            scores = vectors[leaders] @ vectors[i]
            best = int(np.argmax(scores))
            if scores[best] >= threshold:
                members[best].append(i)
                continue
        leaders.append(i)
        members.append([i])
    groups = []
    for chosen in members:
        centre = vectors[chosen].mean(axis=0)
        order = sorted(chosen, key=lambda i: (-len(wordings[keys[i]]),
                                              -float(vectors[i] @ centre), keys[i]))
        found = sorted((j for i in chosen for j in wordings[keys[i]]), reverse=True)
        groups.append(Group(questions=[firsts[i] for i in order],
                            count=sum(len(wordings[keys[i]]) for i in chosen),
                            ids=[ids[j] for j in found]))
    return sorted(groups, key=lambda g: (-g.count, g.questions[0]))


def _embed(embedder, texts: list[str], known: dict[str, np.ndarray]) -> np.ndarray:
    """Vectors of texts: those `known` (kept when they were asked), the rest embedded now."""
    missing = [t for t in dict.fromkeys(texts) if t not in known]
    if missing:
        many = getattr(embedder, "embed_queries", None)
        fresh = many(missing) if many is not None else [embedder.embed_query(t) for t in missing]
        known = {**known, **dict(zip(missing, np.asarray(fresh, dtype=np.float32)))}
    return np.stack([known[t] for t in texts]).astype(np.float32)


def question_vectors(store: Activity, embedder, since: float) -> dict[str, np.ndarray]:
    """The vectors kept with the questions, where this embedder's model made them (the
    question is embedded once, when it is asked; the report then embeds only the rest)."""
    info = getattr(embedder, "info", None)
    if info is None:
        return {}
    return {question: vector for question, blob in store.question_vectors(since, info.name).items()
            if len(vector := np.frombuffer(blob, dtype=np.float32)) == info.dimension}


def unanswered(turn: StoredTurn, min_score: float) -> str | None:
    """Why a finished turn counts as a question the blog could not answer, or None."""
    if turn.state not in ("done", "stopped"):
        return None
    if turn.answered is False:
        return "not covered"  # the relevance gate refused it, or no post had a quote
    if turn.similarity is not None and turn.similarity < min_score + LOW_MARGIN:
        return "barely covered"
    return None


def cited_posts(turn: StoredTurn) -> set[tuple[str, str]]:
    """(title, url) of the posts an answer cited ([n] in its text, or its quoted answer)."""
    numbers = {int(n) for n in _CITATION.findall(turn.answer or "")}
    if turn.quick and isinstance(turn.quick.get("n"), int):
        numbers.add(turn.quick["n"])
    return {(s.get("title", ""), s.get("url", "")) for s in turn.sources
            if isinstance(s, dict) and s.get("n") in numbers}


def build_report(store: Activity, embedder, *, since: float, min_score: float,
                 now: float | None = None, top: int = TOP) -> dict:
    """The report over activity since `since` seconds ago."""
    now = time.time() if now is None else now
    start = now - since
    turns = [t for t in store.turns_since(start) if t.asked <= now]
    by_id = {t.id: t for t in turns}
    known = question_vectors(store, embedder, start)
    asked = group([t.question for t in turns], [t.id for t in turns], embedder, SAME_QUESTION,
                  known)
    missed = [(t, why) for t in turns if (why := unanswered(t, min_score))]
    themes = group([t.question for t, _ in missed], [t.id for t, _ in missed], embedder,
                   THEME_SIMILARITY, known)
    reasons = {t.id: why for t, why in missed}
    feedback = store.feedback_since(start)
    down = [f for f in feedback if f["vote"] < 0 and f["turn"] in by_id]
    searches = Counter(normalise(s["query"]) for s in store.empty_searches_since(start))
    cited = Counter(post for t in turns for post in cited_posts(t))
    finished = [t for t in turns if t.state in ("done", "stopped", "error")]
    return {
        "since": round(start, 3), "until": round(now, 3),
        "totals": {
            "questions": len(turns),
            "conversations": len({t.conversation for t in turns}),
            "unanswered": len(missed),
            "errors": sum(t.state == "error" for t in finished),
            "feedback_up": sum(f["vote"] > 0 for f in feedback),
            "feedback_down": sum(f["vote"] < 0 for f in feedback),
            "empty_searches": sum(searches.values()),
            "via": dict(Counter(t.via for t in turns)),
        },
        "most_asked": [g.as_dict() for g in asked[:top]],
        "unanswered_themes": [
            {**g.as_dict(), "why": dict(Counter(reasons[i] for i in g.ids))} for g in themes[:top]],
        "marked_down": [
            {"answer": f["turn"], "question": by_id[f["turn"]].question,
             "reply": _snippet(by_id[f["turn"]].answer), "comment": f["comment"],
             "given": round(f["given"], 3)}
            for f in sorted(down, key=lambda f: -f["given"])[:top]],
        "empty_searches": [{"query": q, "count": n} for q, n in
                           sorted(searches.items(), key=lambda x: (-x[1], x[0]))[:top]],
        "most_cited": [{"title": title, "url": url, "answers": n} for (title, url), n in
                       sorted(cited.items(), key=lambda x: (-x[1], x[0]))[:top]],
    }


def _snippet(text: str, chars: int = 200) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= chars else text[:chars - 1].rstrip() + "…"


def format_report(report: dict, permalink=lambda turn_id: f"/a/{turn_id}") -> str:
    """The report as text for a terminal."""
    t = report["totals"]
    days = (report["until"] - report["since"]) / 86400
    lines = [f"Activity of the last {days:g} days: {t['questions']} question(s) in "
             f"{t['conversations']} conversation(s), {t['unanswered']} not answered, "
             f"{t['errors']} failed; feedback {t['feedback_up']} up, {t['feedback_down']} down; "
             f"{t['empty_searches']} search(es) found nothing."]

    def section(title: str, items: list, render) -> None:
        lines.extend(["", title])
        lines.extend(render(item) for item in items) if items else lines.append("  (none)")

    def grouped(g: dict) -> str:
        also = "".join(f"\n      also: {q}" for q in g["examples"])
        return f"  {g['count']:>4}  {g['question']}{also}"

    section("Most asked (grouped by meaning):", report["most_asked"], grouped)
    section("What to write next (questions the posts did not answer, by theme):",
            report["unanswered_themes"], grouped)
    section("Answers marked down:", report["marked_down"],
            lambda f: f"  {f['question']}\n      answer: {f['reply']}"
                      + (f"\n      comment: {f['comment']}" if f["comment"] else "")
                      + f"\n      {permalink(f['answer'])}")
    section("Searches that found nothing:", report["empty_searches"],
            lambda s: f"  {s['count']:>4}  {s['query']}")
    section("Posts cited most:", report["most_cited"],
            lambda p: f"  {p['answers']:>4}  {p['title']}  {p['url']}")
    return "\n".join(lines)
