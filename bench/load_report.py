"""The load test's report: Markdown from the results, and its part of docs/reliability.md."""

from __future__ import annotations

from common import ROOT, table
from load_clients import Answer
from load_plan import (ASK_TIMEOUT, FREE_LIMIT, HANG_UP, LONG_ANSWERS, POLL, READ_TIMEOUT,
                       SEARCH_TIMEOUT)

DOC = ROOT / "docs" / "reliability.md"
START, END = "<!-- load-test:start -->", "<!-- load-test:end -->"


def render(data: dict) -> str:
    """The Markdown report: machine, command, settings, goals, then each phase."""
    facts, plan = data["machine"], data["plan"]
    search, chat, combined = data["search"], data["chat"], data["combined"]
    single, queue = data["disconnect"]["single"], data["disconnect"]["queue"]
    health = data["short_answers"]["health"]
    worker = search["worker"]
    lines = [
        f"<sub>`{data['command']}`, {facts['date']}, {facts['cores']} cores ({facts['cpu']}), "
        f"{facts['memory_gb']} GB, Python {facts['python']}: {data['seconds']} s"
        + (" (quick mode)" if data["quick"] else "") + "</sub>",
        "",
        f"gunicorn started from the Procfile (`{data['gunicorn']}`) on 127.0.0.1 with the "
        f"shared corpus ({health.get('posts')} posts, {health.get('passages'):,} passages). "
        "Every client runs on this machine too. Load average (1 min): "
        f"{data['load_average'][0]:.1f} before, {data['load_average'][1]:.1f} after.",
        "",
        f"- Server for search, chat and combined: {_env(data['short_answers']['env'])} set; "
        f"as the server reads its settings: {_env(data['short_answers']['settings'])}.",
        f"- Server for disconnect: {_env(data['long_answers']['env'])} set; as the server "
        f"reads its settings: {_env(data['long_answers']['settings'])}.",
        "- Every other setting at its default. The per-client rate limits are off because "
        "every client shares 127.0.0.1.",
        f"- Client timeouts: {SEARCH_TIMEOUT:.0f} s per search; {ASK_TIMEOUT:.0f} s per "
        f"question (queue included), {READ_TIMEOUT:.0f} s of silence on its stream.",
        "- Both models were loaded before any phase (one search, one question).",
        "",
        table(["phase", "goal", "measured", "met"],
              [[g["phase"], g["goal"], g["measured"], "**yes**" if g["met"] else "**no**"]
               for g in data["goals"]]),
        "",
        "### Search",
        "",
        f"{search['clients']} clients, each on its own keep-alive connection, sent "
        f"`GET /api/search?q=...` (hybrid) back to back for {search['seconds']:.0f} s. Queries: "
        f"{search['distinct_texts']:,} distinct texts from the corpus (titles in four letter "
        "cases, headings, first six words of passages), shuffled and handed out in turn, so "
        "the server's query cache (512 texts) rarely holds one.",
        "",
        table(["requests", "errors", "completed per s", "p50 ms", "p95 ms", "max ms"],
              [[f"{search['requests']:,}", search["errors"], search["per_second"],
                search.get("p50_ms", "–"), search.get("p95_ms", "–"),
                search.get("max_ms", "–")]]),
        "",
        f"Latency is client-timed, over successful requests (max over all). Gunicorn worker "
        f"RSS: {worker['rss_before_mb']} MB before, {worker['rss_peak_mb']} MB at peak, "
        f"{worker['rss_after_mb']} MB after. CPU: the worker {worker['worker_cpu_s']} s, "
        f"the client process {worker['client_cpu_s']} s, over {worker['wall_s']} s.",
        *_errors(search),
        "",
        "### Chat",
        "",
        f"{len(chat['answers'])} clients sent `POST /api/ask` at the same moment (a barrier) "
        "and read the event stream to its end; times are from sending the request. "
        "\"served\" is the order in which they got the model (by first token).",
        "",
        answer_table(chat["answers"]),
        "",
        f"Afterwards /healthz: busy {chat['health_after']['llm'].get('busy')}, waiting "
        f"{chat['health_after']['llm'].get('waiting')}.",
        "",
        "### Disconnect",
        "",
        f"With answers of up to {LONG_ANSWERS['RAGSERVER_MAX_ANSWER_TOKENS']} tokens. The "
        f"question \"{HANG_UP}\" was first answered in full: "
        f"{_answer_text(single['baseline'])}. Then asked again (llama.cpp still holds its "
        "prompt) by a client that shut its socket down at the first `token` event; "
        "/healthz was polled every "
        f"{POLL * 1000:.0f} ms from that moment, and once the model was free a next "
        "question was sent.",
        "",
        table(["measured", "seconds"], [
            ["hang-up client: request to first token", _s(single["hung_up"]["ttft"])],
            ["hang-up to /healthz `llm.busy` false", _s(single["freed"]["free_s"])],
            ["next question: request to first token", _s(single["next"]["ttft"])],
            ["hang-up to the next question's first token",
             _s(single["hang_up_to_next_first_token_s"])],
            ["the full answer, first token to end (for comparison)",
             _s(_generating(single["baseline"]))],
        ]),
        "",
        f"Next question: {_answer_text(single['next'])}.",
        "",
        "Then 3 clients that hang up at their first token and 1 that reads to the end, sent "
        "0.2 s apart:",
        "",
        answer_table(queue["answers"]),
        "",
        "Each hang-up to the next client's first token, in the order the model served them: "
        + (", ".join(f"{s} s" for s in queue["handoffs_s"]) or "none measured")
        + ". From the last client's end (hang-up or done) to /healthz `llm.busy` false: "
        + (f"{queue['freed']['free_s']} s" if queue["freed"]["free_s"] is not None
           else f"still busy after {FREE_LIMIT:.0f} s") + ".",
        "",
        "### Combined",
        "",
        f"{combined['clients']} search clients as above; after {plan['combined_lead']:.0f} s, "
        f"{combined['askers']} question clients as in the chat phase, with other questions "
        f"(questions took {combined['questions_seconds']} s); the searchers stopped once "
        "every question had ended.",
        "",
        table(["searches started", "requests", "errors", "p50 ms", "p95 ms", "max ms"], [
            [name, f"{s['requests']:,}", s["errors"], s.get("p50_ms", "–"),
             s.get("p95_ms", "–"), s.get("max_ms", "–")]
            for name, s in [("before the questions", combined["searches_before_questions"]),
                            ("while questions were queued or answered",
                             combined["searches_while_questions"]),
                            ("while tokens were being generated",
                             combined["searches_during_generation"])]]),
        "",
        answer_table(combined["answers"]),
        "",
        f"Worker RSS peak {combined['worker']['rss_peak_mb']} MB; CPU: the worker "
        f"{combined['worker']['worker_cpu_s']} s, the client process "
        f"{combined['worker']['client_cpu_s']} s, over {combined['worker']['wall_s']} s.",
        *_errors(combined["searches_all"]),
        "",
        "### Server log",
        "",
        *_log("search, chat and combined", data["short_answers"]),
        *_log("disconnect", data["long_answers"]),
    ]
    return "\n".join(lines)


def _env(env: dict[str, str]) -> str:
    return ", ".join(f"`{k}={v}`" for k, v in env.items())


def _errors(found: dict) -> list[str]:
    if not found["errors"]:
        return []
    return ["", "Errors by kind (count, first example):", ""] + [
        f"- {kind}: {e['count']} (`{e['example']}`)" for kind, e in found["errors_by_kind"].items()]


def _log(name: str, server: dict) -> list[str]:
    head = (f"The {name} server stopped {server['stop_s']} s after SIGTERM and logged "
            f"{len(server['log'])} line(s) besides gunicorn's INFO lines")
    if not server["log"]:
        return [head + ".", ""]
    shown = server["log"][:20]
    return [head + (":" if len(shown) == len(server["log"]) else f" (first {len(shown)}):"),
            "", "```", *shown, "```", ""]


def _answer(found: dict) -> Answer:
    fields = {k: v for k, v in found.items() if k in Answer.__dataclass_fields__}
    return Answer(**fields)


def _answer_text(found: dict) -> str:
    return (f"{found['outcome']}, first token after {_s(found['ttft'])} s, "
            f"{found['tokens']} tokens in {_s(found['total'])} s")


def _generating(found: dict) -> float | None:
    if found["ttft"] is None or found["total"] is None:
        return None
    return found["total"] - found["ttft"]


def _s(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds:.2f}"


def answer_table(answers: list[dict]) -> str:
    """One row per question client, with the order in which the model served them."""
    found = [_answer(a) for a in answers]
    # Clients started together: the order of first tokens is the order they got the model.
    served = sorted((i for i, a in enumerate(found) if a.ttft is not None),
                    key=lambda i: found[i].ttft + found[i].sent_at)
    rows = []
    for i, a in enumerate(found):
        queued = ", ".join(map(str, a.queued[:1])) + (
            f" … {a.queued[-1]} ({len(a.queued)} events)" if len(a.queued) > 1 else "")
        rate = (a.done or {}).get("tokens_per_s")
        rows.append([i + 1, a.question, a.outcome, queued or "–",
                     served.index(i) + 1 if i in served else "–", _s(a.ttft), _s(a.total),
                     a.tokens, "–" if rate is None else rate, a.detail[:160] or "–"])
    return table(["client", "question", "outcome", "queue position (first … last)", "served",
                  "first token s", "total s", "tokens", "tokens/s (done)", "detail"], rows)


def write_doc(markdown: str) -> None:
    """Replace what is between the load-test markers in docs/reliability.md."""
    text = DOC.read_text() if DOC.exists() else f"# Reliability\n\n{START}\n{END}\n"
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    DOC.write_text(f"{before}{START}\n## Load test\n\n{markdown}\n{END}{after}")
