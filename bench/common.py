"""Shared by the benchmarks: the machine, repeated timings, and the report format.

Every benchmark module under bench/ that takes part in `./run bench` defines

    def run(quick: bool) -> Section

and bench/report.py runs them one after another (never two at once: these machines
have two cores) and writes docs/benchmarks.md. A figure is reported as min / median /
max over repeats, next to its baseline measured in the same run, and as a ratio to it.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("RAGSERVER_TEST_CORPUS", ROOT.parent / "shared" / "corpus" / "til"))
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@contextmanager
def neighbour(busy: bool = True):
    """A process spinning on one core for the duration (or nothing): the CPU-bound
    neighbour a small server always has (the embedder, a search, the cron ingest)."""
    if not busy:
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.5)  # let the scheduler place it
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def machine() -> dict:
    """Cores, CPU model, memory, Python and the date: printed above every report."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gb": round(memory_gb, 1),
            "python": platform.python_version(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """(seconds, result) of one call."""
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def repeat(fn: Callable[[], object], times: int, warmup: int = 1) -> list[float]:
    """Seconds of `times` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    return [timed(fn)[0] for _ in range(times)]


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100), interpolated."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Figure:
    """One measured quantity over repeats, e.g. passages/s of ragserver ingest."""
    name: str
    unit: str
    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def spread(self, digits: int = 1) -> str:
        """min / median / max."""
        return " / ".join(f"{v:,.{digits}f}" for v in (min(self.values), self.median,
                                                      max(self.values)))


@dataclass
class Section:
    """A benchmark's part of the report: a heading, Markdown, and the raw numbers."""
    title: str
    markdown: str
    data: dict = field(default_factory=dict)


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def compare(figure: Figure, baseline: Figure, digits: int = 1, higher_is_better: bool = True) -> list:
    """A table row: the figure, its baseline and the ratio of their medians."""
    ratio = figure.median / baseline.median if baseline.median else float("nan")
    return [figure.name, f"{figure.spread(digits)} {figure.unit}", baseline.name,
            f"{baseline.spread(digits)} {baseline.unit}", f"{ratio:.2f}×"]


COMPARE_HEADERS = ["measured", "min / median / max", "baseline", "min / median / max", "ratio"]
LATENCY_HEADERS = ["measured", "p50 / p95 ms", "baseline", "p50 / p95 ms", "ratio (p50)"]


def latency_row(figure: tuple[str, list[float]], baseline: tuple[str, list[float]]) -> list:
    """A table row: p50 / p95 of the figure and of its baseline, and the ratio of the p50s."""
    (name, values), (base_name, base_values) = figure, baseline
    ratio = percentile(values, 50) / percentile(base_values, 50)
    return [name, _p50_p95(values), base_name, _p50_p95(base_values), f"{ratio:.2f}×"]


def _p50_p95(seconds: list[float]) -> str:
    return f"{format_ms(percentile(seconds, 50))} / {format_ms(percentile(seconds, 95))}"


def format_ms(seconds: float) -> str:
    """Milliseconds with fewer decimals the larger they are: 1,234, 56.7, 0.89."""
    ms = seconds * 1000
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 1 else f"{ms:.2f}"
