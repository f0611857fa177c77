"""Checks on a generated answer against the sources it was given. Pure functions.

A small model invents: commands that are in no post, citations of sources it was never
shown, and the same line over and over. These checks find each of them so that the
reader sees it: a loop is cut, a citation of no source is removed, and every sentence or
code block that the sources do not support is marked (docs/answer-quality.md measures
how each check behaves on real answers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
FENCE = re.compile(r"^```[^\n]*\n(.*?)(?:^```[ \t]*$|\Z)", re.M | re.S)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
WORD = re.compile(r"[a-z0-9][a-z0-9_.\-/]*[a-z0-9]|[a-z0-9]", re.I)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`\"'(\[*])|\n+")

# Words that carry no claim: a sentence made of these and the question's own words
# states nothing the sources could fail to support.
STOPWORDS = frozenset("""
a about above after again all also am an and any are as at be because been before being
below between both but by can could did do does doing done down during each either else
etc even ever every few for from further get gets got had has have having he her here
hers him his how however i if in into is it its itself just least less like make makes
many may me might more most much must my need needs no nor not now of off often on once
one only or other our out over own per rather same see seem should show shows shown
simply since so some such than that the their them then there these they this those
through to too under until up upon us use used uses using very via want was way we well
were what when where whether which while who whom why will with within without would
yes yet you your first second next following follows example examples instance
command commands run running step steps answer question source sources based
provided according mentioned information following also following note
""".split())

LOOP_MIN = 12  # characters: shorter repeats ("the the the") are left to the sampler
LOOP_LONG = 80  # a unit this long repeated twice is a loop; shorter ones three times
LOOP_MAX = 600
MIN_CLAIM_WORDS = 3  # sentences with fewer content words are not judged
SUPPORT_RATIO = 0.5  # share of a sentence's content words that the sources must contain


@dataclass(frozen=True)
class Segment:
    kind: str  # prose or code
    text: str  # as written, citations included
    supported: bool | None  # None: too short to judge
    sources: tuple[int, ...] = ()  # sources that contain the most of it
    missing: tuple[str, ...] = ()  # code lines, code spans or words found in no source


@dataclass
class Checked:
    text: str  # the answer with citations of no source removed (and missing ones added)
    segments: list[Segment] = field(default_factory=list)
    removed_citations: list[int] = field(default_factory=list)
    cited: list[int] = field(default_factory=list)
    added_citations: int = 0  # supported sentences the model left uncited, now cited

    @property
    def unsupported(self) -> int:
        return sum(s.supported is False for s in self.segments)

    def counts(self) -> dict:
        """What the done event reports."""
        judged = [s for s in self.segments if s.supported is not None]
        return {"sentences": len(self.segments), "judged": len(judged),
                "unsupported": self.unsupported, "cited": self.cited,
                "removed_citations": self.removed_citations,
                "added_citations": self.added_citations}


def find_loop(text: str) -> int | None:
    """Where to cut `text` if it ends by repeating itself (keeping one copy), else None."""
    length = len(text)
    for period in range(LOOP_MIN, min(LOOP_MAX, length // 2) + 1):
        unit = text[length - period:]
        if not unit.strip():
            continue
        copies = 2 if period >= LOOP_LONG else 3
        if period * copies > length:
            continue
        if all(text[length - (i + 1) * period:length - i * period] == unit
               for i in range(1, copies)):
            return length - (copies - 1) * period
    return None


def normalize(text: str) -> str:
    """Lower case, one space between words, no trailing punctuation: for matching code."""
    return " ".join(text.lower().split()).strip(" ;,.:")


def words(text: str) -> set[str]:
    """Content words (lower case), without stop words and citation numbers."""
    return {w.lower().strip(".-/") for w in WORD.findall(CITATION.sub(" ", text))
            if w.lower() not in STOPWORDS and not w.isdigit() or len(w) > 3 and w.isdigit()}


def strip_citations(text: str, allowed: int) -> tuple[str, list[int], list[int]]:
    """Remove citations of sources outside 1..allowed: (text, removed, cited)."""
    removed: list[int] = []
    cited: list[int] = []

    def keep(match: re.Match) -> str:
        numbers = [int(n) for n in match.group(1).split(",")]
        good = [n for n in numbers if 1 <= n <= allowed]
        removed.extend(n for n in numbers if n not in good)
        cited.extend(n for n in good if n not in cited)
        return f"[{', '.join(map(str, good))}]" if good else ""

    cleaned = CITATION.sub(keep, text)
    cleaned = re.sub(r"[ \t]+([.,;:!?])", r"\1", cleaned)  # "text ." left by a removal
    return cleaned, removed, sorted(cited)


def segments_of(text: str) -> list[tuple[str, str]]:
    """(kind, text) pieces of an answer: fenced code blocks whole, prose by sentence."""
    pieces: list[tuple[str, str]] = []
    position = 0
    for fence in FENCE.finditer(text):
        pieces += _sentences(text[position:fence.start()])
        pieces.append(("code", fence.group(0)))
        position = fence.end()
    pieces += _sentences(text[position:])
    return pieces


def _sentences(prose: str) -> list[tuple[str, str]]:
    return [("prose", s.strip()) for s in SENTENCE_END.split(prose) if s and s.strip()]


def check_answer(text: str, sources: list[str], question: str = "",
                 complete: bool = True) -> Checked:
    """Cut citations of no source, then judge each sentence and code block against the
    sources (`sources[i]` is source i + 1). `complete`: a supported sentence without a
    citation gets one, of the source that holds most of it."""
    cleaned, removed, _ = strip_citations(text, len(sources))
    flat = [normalize(s) for s in sources]
    vocab = [words(s) for s in sources]
    given = words(question)
    segments = []
    for kind, piece in segments_of(cleaned):
        if kind == "code":
            segments.append(_judge_code(piece, flat))
        else:
            segments.append(_judge_prose(piece, flat, vocab, given))
    added = 0
    if complete:
        cleaned, segments, added = _cite_supported(cleaned, segments)
    return Checked(cleaned, segments, removed, sorted(cited_in(cleaned)), added)


def cited_in(text: str) -> set[int]:
    """Numbers cited as [n] or [n, m]."""
    return {int(n) for group in CITATION.findall(text) for n in group.split(",")}


def _cite_supported(text: str, segments: list[Segment]) -> tuple[str, list[Segment], int]:
    """Add [n] to each supported prose sentence that cites nothing, before its final
    punctuation: n is the source that contains most of it."""
    out, kept, cursor, added = [], [], 0, 0
    for segment in segments:
        found = text.find(segment.text, cursor)
        if found < 0:
            kept.append(segment)
            continue
        piece = segment.text
        if (segment.kind == "prose" and segment.supported and segment.sources
                and not CITATION.search(piece)):
            body, end = re.match(r"(.*?)([.!?:]*)$", piece, re.S).groups()
            piece = f"{body.rstrip()} [{segment.sources[0]}]{end}"
            added += 1
        out.append(text[cursor:found] + piece)
        kept.append(Segment(segment.kind, piece, segment.supported, segment.sources,
                            segment.missing))
        cursor = found + len(segment.text)
    out.append(text[cursor:])
    return "".join(out), kept, added


def _where(needle: str, flat: list[str]) -> tuple[int, ...]:
    return tuple(i + 1 for i, source in enumerate(flat) if needle in source)


def _judge_code(block: str, flat: list[str]) -> Segment:
    """A code block is supported when every line of it stands in some source."""
    body = FENCE.match(block)
    lines = [normalize(line) for line in (body.group(1) if body else block).splitlines()]
    lines = [line for line in lines if len(line) >= 3 and not line.startswith(("#", "//"))]
    if not lines:
        return Segment("code", block, None)
    missing = [line for line in lines if not _where(line, flat)]
    found = sorted({n for line in lines for n in _where(line, flat)})
    return Segment("code", block, not missing, tuple(found), tuple(missing))


def _judge_prose(sentence: str, flat: list[str], vocab: list[set[str]],
                 given: set[str]) -> Segment:
    """Supported when its code spans stand in a source and most of its other content words
    do. A span the question names is no exception: that the reader asked about `--foo`
    does not make an answer built on it true (and `test` stood in "tests")."""
    spans = [normalize(s) for s in INLINE_CODE.findall(sentence) if len(s.strip()) >= 3]
    missing_spans = [s for s in spans if not _where(s, flat)]
    claim = words(INLINE_CODE.sub(" ", sentence)) - given
    if not spans and len(claim) < MIN_CLAIM_WORDS:
        return Segment("prose", sentence, None)
    holding = [n for span in spans for n in _where(span, flat)]
    best, best_found = (holding[0] if holding else 0), set()
    for i, source_words in enumerate(vocab):
        found = claim & source_words
        if not holding and len(found) > len(best_found):
            best, best_found = i + 1, found
    union = set().union(*vocab) if vocab else set()
    ratio = len(claim & union) / len(claim) if claim else 1.0
    supported = not missing_spans and (len(claim) < MIN_CLAIM_WORDS or ratio >= SUPPORT_RATIO)
    missing = tuple(missing_spans) + tuple(sorted(claim - union))
    return Segment("prose", sentence, supported, (best,) if best else (), missing)
