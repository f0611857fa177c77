"""Settings: E5 detection and prefixes, environment parsing."""

from __future__ import annotations

import pytest

from ragserver.config import is_e5_model, load_settings


@pytest.mark.parametrize("name,e5", [
    ("intfloat/e5-small-v2", True),
    ("intfloat/multilingual-e5-base", True),
    ("/models/e5-large-v2/", True),
    ("sentence-transformers/all-MiniLM-L6-v2", False),
    ("BAAI/bge-small-en-v1.5", False),
    ("some/model-e55", False),
])
def test_e5_family_detection(name, e5):
    assert is_e5_model(name) is e5


def test_prefix_defaults_and_overrides():
    env = {"RAGSERVER_EMBEDDING_MODEL": "intfloat/e5-small-v2"}
    assert load_settings(env).prefixes == ("query: ", "passage: ")
    env["RAGSERVER_QUERY_PREFIX"] = ""  # an empty value turns the prefix off
    assert load_settings(env).prefixes == ("", "passage: ")
    assert load_settings({}).prefixes == ("", "")
    assert load_settings({"RAGSERVER_PASSAGE_PREFIX": "doc: "}).prefixes == ("", "doc: ")


def test_database_and_bad_numbers(tmp_path):
    assert load_settings({"RAGSERVER_INSTANCE_PATH": str(tmp_path)}).database == \
        str(tmp_path / "ragserver.db")
    assert load_settings({"RAGSERVER_DB": "/x/y.db"}, db="/z.db").database == "/z.db"
    with pytest.raises(ValueError, match="RAGSERVER_COMMIT_ROWS must be a whole number"):
        load_settings({"RAGSERVER_COMMIT_ROWS": "lots"})


def test_database_url_names_the_database_and_hides_its_password():
    url = "postgresql://blog:s3cret@db.example:5432/blog"
    settings = load_settings({"RAGSERVER_DATABASE_URL": url})
    assert settings.database == url and settings.index_kind == "hnsw"
    assert settings.database_label == "postgresql://blog:***@db.example:5432/blog"
    assert load_settings({"RAGSERVER_DATABASE_URL": url}, db="/z.db").database == "/z.db"
    assert load_settings({}, db=url).database == url
    with pytest.raises(ValueError, match="name two databases"):
        load_settings({"RAGSERVER_DATABASE_URL": url, "RAGSERVER_DB": "/x.db"})
    with pytest.raises(ValueError, match=r"no storage backend for mysql://"):
        load_settings({"RAGSERVER_DATABASE_URL": "mysql://db.example/blog"})


def test_unknown_vector_index_is_refused():
    with pytest.raises(ValueError, match="RAGSERVER_VECTOR_INDEX must be one of vss, vec for "
                                         ".*, not 'faiss'"):
        load_settings({"RAGSERVER_VECTOR_INDEX": "faiss"})
    assert load_settings({"RAGSERVER_VECTOR_INDEX": "vec"}).index_kind == "vec"
    assert load_settings({}).index_kind == "vss"
    with pytest.raises(ValueError, match="must be one of hnsw for postgresql://h/b, not 'vss'"):
        load_settings({"RAGSERVER_VECTOR_INDEX": "vss", "RAGSERVER_DATABASE_URL": "postgresql://h/b"})


def test_embedding_backend_comes_from_its_table(monkeypatch):
    """A new embedding backend is a class implementing Embedder plus its row in BACKENDS."""
    from ragserver import embedder as embedding
    from ragserver.embedder import EmbedderError, load_embedder

    made = []

    class Recorded:
        def __init__(self, name, query_prefix, passage_prefix, batch_size=32):
            made.append((name, query_prefix, passage_prefix, batch_size))

    monkeypatch.setitem(embedding.BACKENDS, "recorded", Recorded)
    settings = load_settings({"RAGSERVER_EMBEDDING_BACKEND": "recorded",
                              "RAGSERVER_EMBEDDING_MODEL": "intfloat/e5-small-v2"})
    assert isinstance(load_embedder(settings), Recorded)
    assert made == [("intfloat/e5-small-v2", "query: ", "passage: ", 32)]
    with pytest.raises(EmbedderError, match="must be one of sentence-transformers, recorded"):
        load_embedder(load_settings({"RAGSERVER_EMBEDDING_BACKEND": "fasttext"}))
