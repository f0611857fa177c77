"""Topics, the map and axes over real posts, on both backends; `ragserver topics`, `map`
and `axis` as a user runs them."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from collections import Counter

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from conftest import CORPUS, clone_database, copy_posts, rows
from ragserver import explore
from ragserver.explore import topics as topic_model
from ragserver.ingest.pipeline import Ingester
from ragserver.ingest.sources import open_source
from ragserver.storage import open_storage

SVG = "{http://www.w3.org/2000/svg}"


def folder_of(source: str) -> str:
    return source.split("/")[-2]


@pytest.fixture
def copy(request, seeded_db, tmp_path):
    """A copy of the seeded database (sqlite, python and uv posts) to change."""
    return clone_database(request, str(seeded_db), tmp_path, "explore")


def test_every_post_has_a_topic_and_a_place(seeded_conn):
    shape = explore.load(seeded_conn)
    posts = seeded_conn.list_posts()
    assert {p.source for p in shape.points} == {p.source for p in posts}
    assert all(0 <= p.x <= 1 and 0 <= p.y <= 1 for p in shape.points)
    assert sum(shape.sizes().values()) == len(posts)
    assert [t.id for t in shape.topics] == list(range(1, len(shape.topics) + 1))
    assert list(topic_model.candidate_ks(len(posts))).count(len(shape.topics)) == 1
    sizes = [shape.sizes()[t.id] for t in shape.topics]
    assert sizes == sorted(sizes, reverse=True)  # topic 1 is the largest
    assert shape.state["posts"] == len(posts) and shape.state["labels"] == "keywords"


def test_topics_find_the_blogs_own_categories(seeded_conn):
    """Two folders of posts (sqlite, python; and one uv post) in two topics: the clusters
    agree with the folders, and the SQLite posts' topic is named by SQL words."""
    ids, matrix = seeded_conn.all_post_vectors()
    posts = {p.id: p for p in seeded_conn.list_posts()}
    folders = [folder_of(posts[int(i)].source) for i in ids]
    labels, _ = topic_model.cluster(matrix, k=2)
    assert adjusted_rand_score(folders, labels) > 0.8  # 0 by chance, 1 for the folders
    texts = seeded_conn.post_texts()
    words = topic_model.keywords([texts[int(i)] for i in ids], labels,
                                 titles=[posts[int(i)].title for i in ids])
    sqlite = Counter(t for t, f in zip(labels, folders) if f == "sqlite").most_common(1)[0][0]
    assert "sqlite" in words[sqlite] and "query" in words[sqlite], words
    assert not any("sql" in word for word in words[1 - sqlite]), words


def test_the_same_posts_give_the_same_map(copy):
    storage = open_storage(copy)
    before = explore.load(storage)
    done = explore.refresh(storage, rebuild=True)
    after = explore.load(storage)
    storage.close()
    assert done.kind == "built"
    assert [(p.source, p.topic, round(p.x, 6), round(p.y, 6)) for p in after.points] == \
        [(p.source, p.topic, round(p.x, 6), round(p.y, 6)) for p in before.points]
    assert [t.keywords for t in after.topics] == [t.keywords for t in before.topics]


def test_a_new_post_joins_the_nearest_topic_without_a_rebuild(copy, embedder, tmp_path):
    """One new post among ~60 is placed (no rebuild): it gets the topic of the posts most
    like it and sits near them; a deleted post leaves the map; a tenth changed rebuilds."""
    storage = open_storage(copy)
    built_at = storage.get_map_state()["built_at"]
    topics_before = storage.topics()
    posts = copy_posts(tmp_path / "more", ["github-actions"])
    extra = tmp_path / "one" / "sqlite"
    extra.mkdir(parents=True)
    newcomer = sorted((CORPUS / "sqlite").glob("*.md"))[0]
    shutil.copy(newcomer, extra / "a-second-copy.md")
    summary = Ingester(storage, embedder).run([open_source(str(tmp_path / "one"),
                                                           base_url="https://til.example/")],
                                              prune=False)
    assert summary.added == 1 and summary.topics == "topics kept: 1 post placed, 0 removed"
    assert storage.get_map_state()["built_at"] == built_at
    assert storage.topics() == topics_before
    shape = explore.load(storage)
    new = next(p for p in shape.points if p.source.endswith("a-second-copy.md"))
    twin = next(p for p in shape.points
                if p.source.endswith(f"sqlite/{newcomer.name}") and p is not new)
    assert new.topic == twin.topic  # the same text: the same topic, the same place
    assert abs(new.x - twin.x) < 0.02 and abs(new.y - twin.y) < 0.02
    assert storage.map_near(new, 1)[0].source == twin.source

    with storage.transaction():
        storage.delete_post(storage.get_post(new.source).id)
    from ragserver import related
    related.refresh(storage)
    assert explore.refresh(storage).line() == "topics kept: 0 posts placed, 1 removed"
    assert storage.map_point(storage.get_post(twin.source).id) is not None
    assert len(storage.map_points()) == len(storage.list_posts())

    summary = Ingester(storage, embedder).run([open_source(str(posts.parent / "more"),
                                                           base_url="https://til.example/")],
                                              prune=False)
    assert summary.topics.startswith("topics rebuilt:")  # 18 new posts: far over a tenth
    assert storage.get_map_state()["built_at"] >= built_at
    assert len(storage.map_points()) == len(storage.list_posts())
    storage.close()


def test_a_chosen_number_of_topics_sticks_until_auto(copy):
    storage = open_storage(copy)
    assert explore.refresh(storage, k=3).topics == 3
    assert len(storage.topics()) == 3 and storage.get_map_state()["k_given"] == 3
    assert explore.refresh(storage).kind == "unchanged"
    assert explore.refresh(storage, rebuild=True).topics == 3  # still the chosen 3
    auto = explore.refresh(storage, k=0)
    assert auto.kind == "built" and storage.get_map_state()["k_given"] is None
    assert auto.topics in topic_model.candidate_ks(len(storage.list_posts()))
    storage.close()


@pytest.mark.parametrize("label, ok", [
    ("SQLite tips", True),  # 'tips' only names a group
    ("Python packaging", True),
    ("Quantum basket weaving", False),  # words from nowhere
    ("Using SQLite with Python and uv for writing a long label here", False),  # too long
    ("", False),
    ("the and of", False),  # nothing but filler
])
def test_a_label_must_come_from_the_titles_or_keywords(label, ok):
    titles = ["SQLite tricks for Python", "Packaging Python with uv", "Querying SQLite",
              "Python packaging basics"]
    assert topic_model.grounded(label, titles, ("sqlite", "python", "uv")) is ok


def test_a_word_in_one_title_only_does_not_name_a_topic():
    titles = ["Django group permissions", "Django admin CSV export", "Django migrations"]
    assert not topic_model.grounded("Django Group Permissions", titles, ("django", "admin"))
    assert topic_model.grounded("Django admin", titles, ("django", "admin"))


@pytest.mark.parametrize("reply, label", [
    ('"SQLite Tricks"', "SQLite Tricks"),
    ("Name: Python Packaging.\nThese posts are about...", "Python Packaging"),
    ("**Label:** uv tools", "uv tools"),
])
def test_the_label_is_taken_from_the_reply(reply, label):
    assert topic_model.clean_label(reply) == label


@pytest.mark.backends("sqlite")
def test_the_answer_model_names_topics_or_keywords_do(copy, chat_model):
    """The real model labels each topic; a label it writes is kept only when grounded in the
    topic's titles and keywords, and no two topics share one."""
    storage = open_storage(copy)
    replies = []
    asked = topic_model.model_labeler(chat_model)

    def labeler(titles, words):
        replies.append(asked(titles, words))
        return replies[-1]

    explore.refresh(storage, labeler=labeler, rebuild=True)
    shape = explore.load(storage)
    storage.close()
    assert len(replies) == len(shape.topics)
    labels = [t.label.lower() for t in shape.topics]
    assert len(set(labels)) == len(labels)
    for topic, reply in zip(shape.topics, replies):
        titles = [p.title for p in shape.central(topic.id, topic_model.LABEL_TITLES)]
        if topic.label_source == "model":
            assert topic.label == topic_model.clean_label(reply)
            assert topic_model.grounded(topic.label, titles, topic.keywords)
        else:
            assert topic.label == topic_model.keyword_label(topic.keywords)
    assert shape.state["labels"] == "model"


def test_an_axis_ranks_posts_between_two_ideas(seeded_conn, embedder):
    line = explore.axis(seeded_conn, embedder, "SQLite database queries", "Python packaging with uv")
    sources = {p.id: p.source for p in seeded_conn.list_posts()}
    ranked = [folder_of(sources[pid]) for pid, _ in line.ranked()]
    assert len(ranked) == len(sources)
    assert Counter(ranked[:10])["sqlite"] >= 8
    assert Counter(ranked[-10:])["sqlite"] == 0
    counts, low, high = line.histogram(bins=10)
    assert sum(counts) == len(sources) and low < 0 < high


# -- the commands ------------------------------------------------------------------

def test_topics_command_lists_and_rebuilds(copy, runner):
    listed = runner("topics", "--db", copy, "--json", check=True)
    topics = [json.loads(line) for line in listed.stdout.splitlines()]
    assert "topics unchanged" in listed.stderr
    storage = open_storage(copy, readonly=True)
    total = len(storage.list_posts())
    storage.close()
    assert sum(t["size"] for t in topics) == total
    assert all(t["keywords"] and t["label"] and len(t["central"]) >= 1 for t in topics)
    three = runner("topics", "--db", copy, "--k", "3", check=True)
    assert "topics rebuilt: 3 topics" in three.stderr
    assert [line.split(".")[0] for line in three.stdout.splitlines() if line[:1].isdigit()] == \
        ["1", "2", "3"]
    wrong = runner("topics", "--db", copy, "--k", "99")
    assert wrong.returncode == 2 and "--k" in wrong.stderr and "1 to 20" in wrong.stderr


def test_topics_command_needs_posts(new_database, runner, tmp_path):
    missing = runner("topics", "--db", tmp_path / "nothing.db")
    assert missing.returncode == 1 and "no database at" in missing.stderr


def test_map_command_writes_svg_and_png(seeded_db, runner, tmp_path):
    svg = runner("map", "--db", seeded_db, "--out", tmp_path / "map.svg", check=True)
    tree = ET.parse(tmp_path / "map.svg").getroot()
    storage = open_storage(seeded_db, readonly=True)
    shape = explore.load(storage)
    storage.close()
    points = [c for c in tree.iter(f"{SVG}circle") if c.find(f"{SVG}title") is not None]
    assert len(points) == len(shape.points)
    legend = [t.text for t in tree.iter(f"{SVG}text")]
    assert legend == [t.label if len(t.label) <= 30 else t.label[:29] + "…" for t in shape.topics]
    assert f"{len(shape.points)} posts, {len(shape.topics)} topics" in svg.stdout

    runner("map", "--db", seeded_db, "--out", tmp_path / "map.png", check=True)
    from PIL import Image
    with Image.open(tmp_path / "map.png") as image:
        assert image.format == "PNG" and image.width > image.height > 0
        colours = {c for _, c in image.getcolors(1 << 20)}
    assert len(colours) > len(shape.topics)

    wrong = runner("map", "--db", seeded_db, "--out", tmp_path / "map.gif")
    assert wrong.returncode == 2 and ".svg or .png" in wrong.stderr
    assert not (tmp_path / "map.gif").exists()
    unwritable = runner("map", "--db", seeded_db, "--out", tmp_path / "no" / "such" / "map.svg")
    assert unwritable.returncode != 0 and "map.svg" in unwritable.stderr


def test_axis_command(seeded_db, runner):
    shown = runner("axis", "SQLite database queries", "Python packaging with uv", "--db",
                   seeded_db, "-n", "3", check=True)
    assert "Most like 'SQLite database queries':" in shown.stdout
    assert shown.stdout.count("https://til.example/") == 6
    first = shown.stdout.split("Most like 'Python packaging with uv':")[0]
    assert first.count("til.example/sqlite/") == 3
    listed = runner("axis", "SQLite database queries", "Python packaging with uv", "--db",
                    seeded_db, "--json", check=True)
    ranked = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [r["rank"] for r in ranked] == list(range(1, len(ranked) + 1))
    assert [r["score"] for r in ranked] == sorted(r["score"] for r in ranked)
    assert all(r["topic"] for r in ranked)
    empty = runner("axis", " ", "essays", "--db", seeded_db)
    assert empty.returncode == 2 and "is empty" in empty.stderr


@pytest.mark.backends("sqlite")
def test_a_database_from_before_topics_still_opens(copy, runner, tmp_path):
    """A file made before topics existed: readers see no map, the map command says how to
    make one, and the next writer adds the tables and builds it."""
    storage = open_storage(copy)
    with storage.transaction():
        rows(storage, "DROP TABLE post_map")
        rows(storage, "DROP TABLE topics")
        rows(storage, "DELETE FROM meta WHERE key = 'map_state'")
    storage.close()
    reader = open_storage(copy, readonly=True)
    assert reader.topics() == [] and reader.map_points() == [] and reader.get_map_state() == {}
    reader.close()
    told = runner("map", "--db", copy, "--out", tmp_path / "m.svg")
    assert told.returncode == 1 and "ragserver topics" in told.stderr
    built = runner("topics", "--db", copy, check=True)
    assert "topics rebuilt" in built.stderr
    assert np.isfinite([p.x for p in explore.load(open_storage(copy, readonly=True)).points]).all()


def test_the_map_version_moves_when_posts_are_placed(copy):
    """A web worker keeps its drawn map until map_version moves: placing posts must move it
    even when no post row changed (an ingest writes its posts first, places them after)."""
    storage = open_storage(copy)
    before = storage.map_version()
    point = storage.map_points()[0]
    with storage.transaction():
        storage.save_map_points([(point.post_id, point.topic, 0.5, 0.5, point.centrality,
                                  storage.map_hashes()[point.post_id])], [])
    assert storage.map_version() != before
    assert storage.map_point(point.post_id).x == 0.5
    storage.close()
