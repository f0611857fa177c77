"""The load test's numbers: searches summarised, answers as stored in the results,
hand-offs between question clients, and each phase's goal met or not."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict

from common import percentile
from load_clients import Answer
from load_plan import FREE_GOAL, FREE_LIMIT


def summarize_searches(requests: list[tuple], seconds: float | None = None) -> dict:
    """Counts, errors by kind with an example, client-timed latency in ms."""
    ok = [took for _, took, problem in requests if not problem]
    problems = [problem for _, _, problem in requests if problem]
    kinds = Counter(error_kind(p) for p in problems)
    examples = {}
    for problem in problems:
        examples.setdefault(error_kind(problem), problem[:300])
    found = {"requests": len(requests), "errors": len(problems),
             "errors_by_kind": {kind: {"count": n, "example": examples[kind]}
                                for kind, n in kinds.most_common()}}
    if ok:
        found.update(p50_ms=round(percentile(ok, 50) * 1000, 1),
                     p95_ms=round(percentile(ok, 95) * 1000, 1),
                     max_ms=round(max(took for _, took, _ in requests) * 1000, 1))
    if seconds:
        found["per_second"] = round(len(requests) / seconds, 1)
    return found


def error_kind(problem: str) -> str:
    """"HTTP 503", "TimeoutError", "malformed JSON"...: what errors are grouped by."""
    return problem.split(":", 1)[0]


def handoffs(answers: list[Answer]) -> list[float]:
    """Seconds from each hang-up until the next question's first token (in model order)."""
    turns = sorted((a for a in answers if a.ttft is not None), key=lambda a: a.sent_at + a.ttft)
    gaps = []
    for before, after in zip(turns, turns[1:]):
        if before.hung_up_at is not None:
            gaps.append(round(after.sent_at + after.ttft - before.hung_up_at, 2))
    return gaps


def summary(a: Answer) -> dict:
    """An Answer for the results file (sent_at, hung_up_at: perf_counter moments of this run)."""
    found = asdict(a)
    for key in ("ttft", "total"):
        found[key] = None if found[key] is None else round(found[key], 3)
    return found


def outcomes(answers: list[Answer]) -> dict[str, int]:
    """How many clients ended each way."""
    return dict(Counter(a.outcome for a in answers))


def goals(data: dict) -> list[dict]:
    """Each phase's goal, what was measured against it, and whether it was met."""
    search, chat, combined = data["search"], data["chat"], data["combined"]
    single, queue = data["disconnect"]["single"], data["disconnect"]["queue"]
    free = single["freed"]["free_s"]
    queue_free = queue["freed"]["free_s"]
    waiter = queue["answers"][-1]
    hung_up = sum(a["outcome"] == "hung up" for a in queue["answers"][:-1])
    return [
        {"phase": "search", "goal": "zero errors",
         "measured": f"{search['errors']} errors in {search['requests']:,} requests",
         "met": search["errors"] == 0 and search["hung_clients"] == 0},
        {"phase": "chat", "goal": "zero failed",
         "measured": _outcome_text(chat["outcomes"]),
         "met": chat["outcomes"].get("failed", 0) == 0},
        {"phase": "disconnect, one client",
         "goal": f"model free within {FREE_GOAL:.0f} s of the hang-up",
         "measured": (f"free after {free} s" if free is not None else
                      f"still busy after {FREE_LIMIT:.0f} s"),
         "met": free is not None and free <= FREE_GOAL},
        {"phase": "disconnect, 3 hang up + 1 waits",
         "goal": (f"the 3 get a token and hang up, the 4th completes, model free within "
                  f"{FREE_GOAL:.0f} s of the last client"),
         "measured": (f"{hung_up} of 3 hung up at a token; the 4th: {waiter['outcome']}; "
                      + (f"free after {queue_free} s" if queue_free is not None
                         else f"still busy after {FREE_LIMIT:.0f} s")),
         "met": (hung_up == 3 and waiter["outcome"].endswith("completed")
                 and queue_free is not None and queue_free <= FREE_GOAL)},
        {"phase": "combined", "goal": "zero search errors (and zero failed questions)",
         "measured": (f"{combined['searches_all']['errors']} errors in "
                      f"{combined['searches_all']['requests']:,} searches; questions: "
                      + _outcome_text(combined["outcomes"])),
         "met": (combined["searches_all"]["errors"] == 0 and combined["hung_clients"] == 0
                 and combined["outcomes"].get("failed", 0) == 0)},
    ]


def _outcome_text(counts: dict[str, int]) -> str:
    order = ["completed", "queued-then-completed", "refused", "failed"]
    return ", ".join(f"{counts.get(k, 0)} {k}" for k in order)
