"""Topics: groups of similar posts (k-means over post vectors) named by their distinctive
words (class-based TF-IDF) and, when an answer model is at hand, by a short label it
writes, kept only when its words come from the group's titles and keywords."""

from __future__ import annotations

import math
import re
from typing import Callable

import numpy as np

from ..terms import STOPWORDS, split_words

MAX_TOPICS = 20  # a legend of more colours than this is not readable
KEYWORDS = 6
SILHOUETTE_SAMPLE = 3000  # posts the choice of k looks at (its cost grows with the square)
LABEL_TITLES = 8  # the most central titles the model sees
LABEL_WORDS = 5
LABEL_CHARS = 48

# Words a label may use without finding them in the titles: they name a group, not a subject.
LABEL_FILLER = frozenset(
    "about and basics blog guide guides notes of on posts tips tools tricks tutorials working "
    "with".split())

Labeler = Callable[[list[str], list[str]], str]  # (titles, keywords) -> the model's reply


def candidate_ks(n: int) -> range:
    """The numbers of topics worth trying for n posts: about sqrt(n/4) to sqrt(n), at most
    MAX_TOPICS, and at least three posts a topic on average."""
    if n < 6:
        return range(1, 2)
    hi = max(2, min(MAX_TOPICS, round(math.sqrt(n)), n // 3))
    lo = min(hi, max(2, round(math.sqrt(n / 4))))
    return range(lo, hi + 1)


def cluster(matrix: np.ndarray, k: int | None = None, threads: int = 1
            ) -> tuple[np.ndarray, np.ndarray]:
    """(topic index of every post, 0 = the largest topic; unit mean vector of each topic).

    k=None chooses it: the candidate with the best silhouette (cosine) on up to
    SILHOUETTE_SAMPLE posts. threads: the most OpenMP and BLAS threads scikit-learn may use
    (left alone, its k-means takes one per core and they spin against any other load).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(max(1, threads)):
        return _cluster(matrix, k)


def _cluster(matrix: np.ndarray, k: int | None) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    n = len(matrix)
    if k is not None:
        k = max(1, min(int(k), n))
    if n == 0:
        return np.zeros(0, np.int64), np.zeros((0, matrix.shape[1]), np.float32)
    candidates = [k] if k else list(candidate_ks(n))
    best = None
    for candidate in candidates:
        if candidate == 1:
            labels = np.zeros(n, np.int64)
            score = 0.0
        else:
            labels = KMeans(candidate, n_init=4, random_state=0).fit_predict(matrix)
            score = silhouette_score(matrix, labels, metric="cosine",
                                     sample_size=min(n, SILHOUETTE_SAMPLE), random_state=0) \
                if len(candidates) > 1 else 0.0
        if best is None or score > best[0]:
            best = (score, labels)
    labels = best[1]
    sizes = np.bincount(labels)
    order = sorted(range(len(sizes)), key=lambda c: (-sizes[c], c))
    rank = np.empty(len(sizes), np.int64)
    rank[order] = np.arange(len(order))
    labels = rank[labels]
    centroids = np.stack([matrix[labels == c].mean(axis=0) for c in range(len(order))])
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return labels, centroids.astype(np.float32)


# Words of two or more characters that start with two letters ("sqlite-utils", "node.js",
# "python3"), so hex and numbers never name a topic.
_TOKEN = r"(?u)\b[a-zA-Z]{2}[a-zA-Z0-9_+#]*(?:[-.][a-zA-Z0-9_+#]+)*\b"
# Words of code and links that every technical topic has, and the halves of contractions
# the tokenizer leaves ("don't" gives "don").
CODE_WORDS = frozenset(
    "com def else false http https import int main none null print return self str sys true "
    "var www aren couldn didn doesn don hasn haven isn ll shouldn ve wasn weren won wouldn"
    .split())


def keywords(texts: list[str], labels: np.ndarray, n: int = KEYWORDS,
             titles: list[str] | None = None) -> list[tuple[str, ...]]:
    """The n most distinctive words and two-word phrases of each topic, by class-based
    TF-IDF over posts: the share of the topic's posts that use a term, times the term's
    inverse document frequency over all posts. So a word counts once a post (one long post
    cannot name its topic alone), and words every topic uses fall away. A phrase and its
    own words are not both kept."""
    if titles is not None:
        texts = [f"{title}\n{text}" for title, text in zip(titles, texts)]
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

    topics = int(labels.max()) + 1 if len(labels) else 0
    if not topics:
        return []
    vectorizer = CountVectorizer(stop_words=sorted(ENGLISH_STOP_WORDS | STOPWORDS | CODE_WORDS),
                                 token_pattern=_TOKEN, ngram_range=(1, 2),
                                 min_df=2 if len(texts) >= 20 else 1, max_df=0.5 if len(texts) >= 20 else 1.0,
                                 binary=True, dtype=np.float32)
    try:
        counts = vectorizer.fit_transform(texts)
    except ValueError:  # no words at all, or none left after the document-frequency limits
        return [() for _ in range(topics)]
    terms = vectorizer.get_feature_names_out()
    per_topic = np.zeros((topics, counts.shape[1]), np.float64)
    for topic in range(topics):
        per_topic[topic] = np.asarray(counts[labels == topic].sum(axis=0)).ravel()
    share = per_topic / np.bincount(labels, minlength=topics)[:, None]
    weights = share * np.log(len(texts) / np.maximum(per_topic.sum(axis=0), 1))
    found = []
    for topic in range(topics):
        chosen: list[str] = []
        for term in (terms[i] for i in np.argsort(-weights[topic], kind="stable")[:n * 8]):
            if weights[topic][vectorizer.vocabulary_[term]] <= 0:
                break
            words = term.split()
            if any(term in c.split() or set(words) <= set(c.split()) for c in chosen):
                continue  # a word of a phrase already chosen, or a phrase of chosen words
            chosen = [c for c in chosen if not (len(words) > 1 and c in words)]
            chosen.append(term)
            if len(chosen) == n:
                break
        found.append(tuple(chosen))
    return found


def keyword_label(words: tuple[str, ...]) -> str:
    """A topic's name from its keywords alone."""
    return ", ".join(words[:3]) or "untitled"


def _stem(word: str) -> str:
    return word[:5]


def clean_label(reply: str) -> str:
    """The label in a model's reply: its first line, without quotes, a 'Name:' lead-in or a
    final full stop."""
    line = next((line for line in reply.strip().splitlines() if line.strip()), "")
    line = re.sub(r"^\s*(?:\*\*)?(?:name|label|topic|title)\s*:\s*", "", line, flags=re.I)
    return line.strip().strip("*\"'`“”‘’ ").rstrip(".").strip()


def grounded(label: str, titles: list[str], words: tuple[str, ...]) -> bool:
    """True when a label is short and every word of it (but a few that only name a group)
    is one of the topic's keywords or in at least two of its titles: it names the group,
    not one post, and invents nothing. Words compare by their first five letters, so
    'deploying' matches 'deploy'."""
    said = split_words(label)
    if not said or len(said) > LABEL_WORDS or len(label) > LABEL_CHARS:
        return False
    in_titles: dict[str, int] = {}
    for title in titles:
        for stem in {_stem(w) for w in split_words(title)}:
            in_titles[stem] = in_titles.get(stem, 0) + 1
    known = {stem for stem, count in in_titles.items() if count >= 2}
    known |= {_stem(w) for text in words for w in split_words(text)}
    content = [w for w in said if w not in STOPWORDS and w not in LABEL_FILLER]
    return bool(content) and all(_stem(w) in known for w in content)


def name_topic(labeler: Labeler | None, titles: list[str], words: tuple[str, ...],
               taken: set[str]) -> tuple[str, str]:
    """(label, "model" or "keywords"): the model's label when it is grounded and not another
    topic's, else the keywords."""
    if labeler is not None and titles:
        label = clean_label(labeler(titles[:LABEL_TITLES], list(words)))
        if grounded(label, titles, words) and label.lower() not in taken:
            return label, "model"
    return keyword_label(words), "keywords"


PROMPT = ("Here are the titles of some blog posts that belong together, and words typical of "
          "them.\n\nTitles:\n{titles}\n\nTypical words: {words}\n\nWrite a name for this group "
          "of posts in two to four words, using words from the titles. Reply with the name only.")


def model_labeler(model, max_tokens: int = 16) -> Labeler:
    """A Labeler asking a ChatModel (ragserver.llm) for a name."""

    def label(titles: list[str], words: list[str]) -> str:
        prompt = PROMPT.format(titles="\n".join(f"- {t}" for t in titles),
                               words=", ".join(words))
        return "".join(model.stream([{"role": "user", "content": prompt}], max_tokens))

    return label
