"""Run the benchmarks one after another and write docs/benchmarks.md (and bench/results.json).

    python bench/report.py [--quick] [NAME ...]      # ./run bench does this

NAME picks some of the benchmarks (ingest, search, index, threads, generation, serving, load,
answers, scale, explore, grouping); --quick runs fewer repeats on less data, to check the
benchmarks themselves (scale: 2k and 10k passages instead of 20k, 200k and 1M; explore: 282
and 2,000 posts, without 20,000).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from common import ROOT, machine  # noqa: E402

BENCHMARKS = ["ingest", "search", "index", "threads", "generation", "serving", "load", "answers",
              "scale", "explore", "grouping"]
# also run alone: python bench/load_test.py, python bench/answer_quality.py,
# python bench/report_grouping.py
MODULES = {"load": "load_test", "answers": "answer_quality", "grouping": "report_grouping"}
RESULTS = HERE / "results.json"
OUT = ROOT / "docs" / "benchmarks.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"some of {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, less data")
    args = parser.parse_args()
    unknown = set(args.names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"no benchmark {', '.join(sorted(unknown))}; there are {', '.join(BENCHMARKS)}")
    stored = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name in args.names or BENCHMARKS:
        module = importlib.import_module(MODULES.get(name, f"bench_{name}"))
        print(f"== {name}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        section = module.run(args.quick)
        seconds = time.perf_counter() - started
        print(section.markdown, f"\n({seconds:.0f} s)\n", file=sys.stderr, flush=True)
        stored[name] = {"title": section.title, "markdown": section.markdown.strip(),
                        "data": section.data, "seconds": round(seconds), "quick": args.quick,
                        "machine": machine()}
        RESULTS.write_text(json.dumps(stored, indent=1) + "\n")
        OUT.write_text(render(stored))
    print(f"wrote {OUT}", file=sys.stderr)


def render(stored: dict) -> str:
    """docs/benchmarks.md from every benchmark's latest results."""
    lines = ["---", "title: Benchmarks", "tags: [benchmarks, measurements]", "---", "",
             "`./run bench` measures ragserver beside the libraries it wraps and the tools a "
             "user would otherwise reach for, on the same machine in the same run. Every "
             "figure is min / median / max over repeats; ratios compare medians. These "
             "machines are shared and noisy: read the ratios more than the absolute times.", ""]
    for name in BENCHMARKS:
        if name not in stored:
            continue
        entry, facts = stored[name], stored[name]["machine"]
        lines += [f"## {entry['title']}", "",
                  f"<sub>`python bench/report.py {name}{' --quick' if entry['quick'] else ''}`, "
                  f"{facts['date']}, {facts['cores']} cores ({facts['cpu']}), "
                  f"{facts['memory_gb']} GB, Python {facts['python']}: {entry['seconds']} s</sub>",
                  "", entry["markdown"], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
