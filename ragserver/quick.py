"""The quick answer: the sentences (or the code block) of the retrieved passages that best
answer the question, quoted verbatim with where they come from. No language model: it
takes one batch of embeddings, so it is ready long before a model's first token, and it
is the whole answer when no model is configured (RAGSERVER_LLM_MODEL=none).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .grounding import INLINE_CODE, segments_of

PASSAGES = 6  # the best-ranked passages it quotes from
MAX_UNITS = 3  # sentences or code blocks quoted at most
MAX_CHARS = 600
MIN_SIMILARITY = 0.25  # below this no sentence answers the question: no quick answer
# A unit's score is its cosine similarity to the question, plus CODE_BONUS when it holds
# code (a block or `inline`), minus RANK_PENALTY per rank of its passage. Chosen on the
# tune questions of bench/answer_questions.json (key fact quoted 19/40, was 9/40 by
# similarity and shared words alone); the held-out ones: 10/20, was 8/20. Posts state
# their problem first ("I wanted to ...") in the question's words, and answer it with a
# command: without the bonus the problem was quoted.
CODE_BONUS = 0.25
RANK_PENALTY = 0.02


@dataclass(frozen=True)
class Quick:
    text: str  # verbatim from source `n`
    n: int  # the source it quotes (numbering of the answer's sources)
    score: float

    def as_dict(self) -> dict:
        return {"text": self.text, "n": self.n, "score": round(self.score, 4)}


def units(text: str) -> list[tuple[str, int, int]]:
    """A passage as (kind, start, end) units: code blocks whole, prose by sentence."""
    found, cursor = [], 0
    for kind, piece in segments_of(text):
        start = text.find(piece, cursor)
        if start < 0 or len(piece) <= 2:
            continue
        cursor = start + len(piece)
        found.append((kind, start, cursor))
    return found


def quick_answer(question: str, sources: list, embedder) -> Quick | None:
    """The best 1-3 units of the first PASSAGES sources, by similarity to the question;
    `sources` have `.n` and `.text`. None when nothing is close enough."""
    candidates = [(source, i, kind, source.text[start:end], start, end)
                  for source in sources[:PASSAGES]
                  for i, (kind, start, end) in enumerate(units(source.text))]
    if not candidates:
        return None
    vectors = embedder.embed_passages([c[3] for c in candidates])
    scores = vectors @ embedder.embed_query(question)
    bonus = np.array([CODE_BONUS * (kind == "code" or bool(INLINE_CODE.search(text)))
                      - RANK_PENALTY * (source.n - 1)
                      for source, _, kind, text, _, _ in candidates])
    best = int(np.argmax(scores + bonus))
    if scores[best] < MIN_SIMILARITY:
        return None
    source, index, kind, _, start, end = candidates[best]
    passage = [c for c in candidates if c[0] is source]
    taken = 1
    # An introduction ("Run this:") or a sentence followed by its command brings the next
    # unit along, and a code block the sentence before it that says what it does.
    for _, _, next_kind, _, _, next_end in passage[index + 1:]:
        introduces = source.text[start:end].rstrip().endswith(":")
        if taken >= MAX_UNITS or not (introduces or (next_kind == "code" and kind == "prose")) \
                or next_end - start > MAX_CHARS:
            break
        end, kind, taken = next_end, next_kind, taken + 1
    if kind == "code" and taken == 1 and index > 0 and passage[index - 1][2] == "prose":
        start = passage[index - 1][4]
    return Quick(source.text[start:end].strip(), source.n, float(scores[best]))
