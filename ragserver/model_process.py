"""The answer model in a child process of its own, so a crash costs one answer.

llama.cpp is native code: an illegal instruction, a segfault, an endless loop or a memory
blow-up inside it would otherwise take the whole web worker down, and every search in
flight with it (issue 10). Here the parent (a web worker, or `ragserver ask`) starts
`python -m ragserver.model_process` and talks to it over its stdin and stdout, one JSON
object per line. The parent watches the child: it turns a death into an `LLMError` that
names the signal, kills a child that stops producing output for `timeout` seconds or
grows past `max_memory_mb`, and starts a fresh child for the next question.

Protocol (parent -> child): {"id", "op": "count", "text"}, {"id", "op": "chat",
"messages", "max_tokens"}, {"id", "op": "cancel"}. Child -> parent: {"ready": {...}} once
loaded (or {"error"} and exit 1), then per request {"tokens": n}, or {"token": piece}...
followed by {"end": "done" | "cancelled"}, or {"error"}.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from .llm import LLMError, LocalChatModel, Message

POLL = 0.25  # seconds between checks on a child that is thinking
CANCEL_GRACE = 10  # seconds a cancelled generation may take to stop before it is killed
STDERR_LINES = 20  # last lines of the child's stderr kept for error messages

SIGNAL_HINTS = {
    "SIGILL": "llama.cpp was compiled for instructions this CPU refuses; `ragserver doctor` "
              "shows the build, and `./run setup` rebuilds it for this machine",
    "SIGKILL": "killed from outside, often by the kernel when memory ran out",
    "SIGSEGV": "a crash inside llama.cpp",
    "SIGBUS": "the model file changed or vanished while in use",
    "SIGABRT": "llama.cpp stopped on a failed check",
}


class ModelDied(LLMError):
    """The model process ended (crashed, was killed, or exited) before finishing."""


def describe_exit(returncode: int) -> str:
    """'was killed by SIGSEGV (Segmentation fault)' or 'exited with status 1'."""
    if returncode < 0:
        try:
            sig = signal.Signals(-returncode)
        except ValueError:
            return f"was killed by signal {-returncode}"
        return f"was killed by {sig.name} ({signal.strsignal(sig)})"
    return f"exited with status {returncode}"


def signal_hint(returncode: int) -> str:
    """What a death by this signal usually means, or ''."""
    if returncode >= 0:
        return ""
    try:
        return SIGNAL_HINTS.get(signal.Signals(-returncode).name, "")
    except ValueError:
        return ""


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MB (Linux), or None when unknown."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class _Child:
    """One running model process and the bytes read from it."""

    def __init__(self, command: list[str], echo_stderr: bool):
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, close_fds=True)
        self.started = time.monotonic()
        self.info: dict = {}  # from its ready message, once loaded
        self.answered = False  # finished a generation: it works on this machine
        self._buffer = b""
        self.stderr: deque[str] = deque(maxlen=STDERR_LINES)
        self.echo_stderr = echo_stderr
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    def _drain_stderr(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self.stderr.append(line)
                if self.echo_stderr:
                        print(f"[model {self.proc.pid}] {line}", file=sys.stderr, flush=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, message: dict) -> bool:
        """Write one request; False when the child is gone."""
        try:
            self.proc.stdin.write(json.dumps(message).encode("utf-8") + b"\n")
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def receive(self, wait: float) -> dict | None | bool:
        """The next message; None if none came within `wait` seconds; False at end of file."""
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([self.proc.stdout], [], [], wait)
            if not ready:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                return False
            self._buffer += chunk
            wait = 0.5  # the rest of a line already on its way
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def kill(self) -> int:
        """SIGKILL (works on a stopped or hung process too); the exit status."""
        if self.alive():
            self.proc.kill()
        return self.wait()

    def wait(self) -> int:
        try:
            return self.proc.wait(timeout=10)
        finally:
            for stream in (self.proc.stdin, self.proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass

    def last_words(self) -> str:
        """The child's last line on stderr, if it said anything useful."""
        return self.stderr[-1][:300] if self.stderr else ""


class ProcessChatModel:
    """A GGUF model answering from a supervised child process. Thread-safe: one request
    at a time goes over the pipe (the Gate already lets one answer run at a time)."""

    def __init__(self, path: str | Path, context_size: int = 4096, threads: int = 1,
                 batch_threads: int = 1, timeout: float = 120, max_memory_mb: int = 0,
                 serving: bool = True):
        self.path = Path(path)
        self.name = self.path.name
        self.context_size = context_size
        self.threads = threads
        self.batch_threads = batch_threads
        self.timeout = timeout
        self.max_memory_mb = max_memory_mb or default_memory_limit(self.path)
        # A server restarts a model that died after working, and passes on what it wrote
        # to stderr (its log); a one-off command does neither.
        self.restart = serving
        self.echo_stderr = serving
        self.restarts = 0  # children started after the first
        self.last_failure = ""
        self.last_failure_at: float | None = None  # time.time()
        self._child: _Child | None = None
        self._lock = threading.Lock()  # a plain Lock: a stream may be closed by another thread
        self._ids = 0
        self._closed = False

    # -- state, for /healthz and doctor ---------------------------------------

    @property
    def loaded(self) -> bool:
        """Whether a child is up with the weights in memory."""
        child = self._child
        return child is not None and bool(child.info) and child.alive()

    @property
    def answering(self) -> bool:
        """Whether an answer holds the child (sent, and not yet ended or closed)."""
        return self._lock.locked()

    @property
    def pid(self) -> int | None:
        child = self._child
        return child.pid if child is not None and child.alive() else None

    def status(self) -> dict:
        """What an operator wants to know about the model process."""
        child = self._child
        return {"process": "running" if self.loaded else
                ("starting" if child is not None and child.alive() else "not running"),
                "restarts": self.restarts,
                "last_failure": self.last_failure or None,
                "last_failure_at": (
                    time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_failure_at))
                    if self.last_failure_at else None),
                "threads": self.threads, "batch_threads": self.batch_threads,
                "max_memory_mb": self.max_memory_mb}

    # -- life cycle ------------------------------------------------------------

    def command(self) -> list[str]:
        """The child's command line."""
        config = {"path": str(self.path), "context_size": self.context_size,
                  "threads": self.threads, "batch_threads": self.batch_threads}
        return [sys.executable, "-m", "ragserver.model_process", json.dumps(config)]

    def start(self) -> None:
        """Start the child now, without waiting for it to load (a head start)."""
        with self._lock:
            if self._child is None or not self._child.alive():
                self._spawn()

    def _spawn(self) -> _Child:
        if not self.path.is_file():
            raise LLMError(f"model file {self.path} does not exist")
        if self._closed:
            raise LLMError("the answer model has been shut down")
        self._child = _Child(self.command(), self.echo_stderr)
        return self._child

    def _ready_child(self) -> _Child:
        """A loaded child: the running one, or a new one (whose load is waited for)."""
        child = self._child
        if child is None or not child.alive():
            if child is not None:
                child.wait()
            child = self._spawn()
        if not child.info:
            message = self._next(child, "loading the model")
            if "error" in message:
                status = child.wait()
                self._child = None
                self.last_failure = message["error"]
                self.last_failure_at = time.time()
                raise LLMError(self.last_failure)
            child.info = message["ready"]
        return child

    def close(self) -> None:
        """Stop the child (end of its stdin first, then SIGKILL if it lingers)."""
        with self._lock:
            self._closed = True
            child, self._child = self._child, None
        if child is not None:
            try:
                child.proc.stdin.close()
                child.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
            child.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- supervision -----------------------------------------------------------

    def _next(self, child: _Child, doing: str) -> dict:
        """The child's next message, watching it meanwhile: a death, silence longer than
        `timeout` or memory over `max_memory_mb` ends the child and raises ModelDied."""
        quiet_since = time.monotonic()
        while True:
            message = child.receive(POLL)
            if message is False:
                self._died(child, doing)
            # Checked at every message too: a small model loads and answers within one
            # POLL, and a limit looked at only while the child is quiet would miss it.
            memory = rss_mb(child.pid)
            if memory is not None and memory > self.max_memory_mb:
                child.kill()
                self._fail(child, doing, f"used {memory:,.0f} MB of memory, more than the "
                                         f"{self.max_memory_mb:,} MB allowed "
                                         "(RAGSERVER_LLM_MAX_MEMORY_MB), and was killed")
            if message is not None:
                return message
            if not child.alive():
                continue  # read what it wrote before dying, then the end of file
            if time.monotonic() - quiet_since > self.timeout:
                child.kill()
                self._fail(child, doing, f"stopped responding (nothing for {self.timeout:g} s) "
                                         "and was killed")

    def _died(self, child: _Child, doing: str) -> None:
        """The child ended by itself: say how (signal, what it usually means), raise."""
        status = child.wait()
        detail = signal_hint(status) or child.last_words()
        self._fail(child, doing, describe_exit(status), detail)

    def _fail(self, child: _Child, doing: str, what: str, detail: str = "") -> None:
        """Record the child's end, start a replacement if it had been working, raise."""
        was_working = child.answered
        if self._child is child:
            self._child = None
        self.last_failure = f"the answer model {what} while {doing}" + (
            f" ({detail})" if detail else "")
        self.last_failure_at = time.time()
        restarting = was_working and self.restart
        if restarting:
            # It ran before, so the next one likely will: load it now, not when the
            # next reader asks. A model that dies while loading is not retried in a loop.
            self._replace(None)
        raise ModelDied(self.last_failure + (
            "; it is restarting, ask again in a moment" if restarting else ""))

    def _replace(self, child: _Child | None) -> None:
        """Kill `child` (if any) and load a new one in the background."""
        if child is not None:
            if self._child is child:
                self._child = None
            child.kill()
        if self.restart and not self._closed:
            self.restarts += 1
            threading.Thread(target=self._restart, daemon=True).start()

    def _restart(self) -> None:
        with self._lock:
            try:
                self._ready_child()
            except LLMError:
                pass  # the next question tries again and reports why it failed

    def _request(self, child: _Child, message: dict, doing: str) -> int:
        self._ids += 1
        if not child.send({"id": self._ids, **message}):
            self._died(child, doing)
        return self._ids

    # -- the ChatModel protocol ------------------------------------------------

    def count_tokens(self, text: str) -> int:
        """Tokens by the model's own tokenizer (in the child)."""
        with self._lock:
            child = self._ready_child()
            self._request(child, {"op": "count", "text": text}, "counting tokens")
            reply = self._next(child, "counting tokens")
            if "error" in reply:
                raise LLMError(reply["error"])
            return reply["tokens"]

    def stream(self, messages: list[Message], max_tokens: int) -> "_Answer":
        """Answer text piece by piece; closing the iterator cancels the generation. The
        request goes to the child now, not at the first piece: it reads the prompt while
        the caller does other work (the quick answer)."""
        self._lock.acquire()
        try:
            child = self._ready_child()
            request = self._request(child, {"op": "chat", "messages": messages,
                                            "max_tokens": max_tokens}, "answering")
        except BaseException:
            self._lock.release()
            raise
        return _Answer(self, child, request)

    def _cancel(self, child: _Child, request: int) -> None:
        """Stop a generation the reader no longer wants; kill a child that won't stop."""
        child.send({"id": request, "op": "cancel"})
        deadline = time.monotonic() + CANCEL_GRACE
        while time.monotonic() < deadline:
            reply = child.receive(POLL)
            if reply is False:
                break
            if isinstance(reply, dict) and ("end" in reply or "error" in reply):
                child.answered = True
                return
        self.last_failure = (f"the answer model did not stop within {CANCEL_GRACE} s of being "
                             "cancelled and was killed")
        self._replace(child)


class _Answer:
    """The pieces of one answer from the child. The model's lock is held from the request
    until the answer ends or is closed; closing it early cancels the generation."""

    def __init__(self, model: ProcessChatModel, child: _Child, request: int):
        self.model, self.child, self.request = model, child, request
        self.over = False

    def __iter__(self) -> "_Answer":
        return self

    def __next__(self) -> str:
        if self.over:
            raise StopIteration
        try:
            reply = self.model._next(self.child, "answering")
        except BaseException:
            self._end(cancel=True)  # a child that died is no longer current: not cancelled
            raise
        if "token" in reply:
            return reply["token"]
        if "error" in reply:
            self._end(cancel=False)
            raise LLMError(f"generation failed: {reply['error']}")
        self.child.answered = True  # "end"
        self._end(cancel=False)
        raise StopIteration

    def close(self) -> None:
        self._end(cancel=True)

    def __del__(self) -> None:  # dropped unfinished: free the model for the next answer
        try:
            self._end(cancel=True)
        except Exception:
            pass

    def _end(self, cancel: bool) -> None:
        if self.over:
            return
        self.over = True
        try:
            if cancel and self.model._child is self.child:
                self.model._cancel(self.child, self.request)
        finally:
            self.model._lock.release()


def default_memory_limit(path: Path) -> int:
    """MB the model process may use: twice the weights plus 1 GB for the context and
    compute buffers, and never more than 90% of the machine's memory."""
    try:
        weights = path.stat().st_size / 2**20
    except OSError:
        weights = 0
    limit = int(2 * weights + 1024)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
        limit = min(limit, int(total * 0.9))
    except (ValueError, OSError):
        pass
    return limit


# -- the child ---------------------------------------------------------------

def _serve(config: dict, out) -> int:
    import faulthandler
    import queue

    faulthandler.enable()  # a native crash prints the Python stack to stderr first
    try:  # when memory runs out, the kernel should end this process, not the web server
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass

    def send(message: dict) -> None:
        out.write(json.dumps(message, ensure_ascii=False) + "\n")
        out.flush()

    requests: queue.Queue[dict] = queue.Queue()
    cancelled: set[int] = set()

    def read_requests() -> None:
        for line in sys.stdin:
            message = json.loads(line)
            if message.get("op") == "cancel":
                cancelled.add(message["id"])
            else:
                requests.put(message)
        os._exit(0)  # the parent is gone: so is the reason to run

    threading.Thread(target=read_requests, daemon=True).start()
    started = time.perf_counter()
    model = LocalChatModel(config["path"], config["context_size"], config["threads"],
                           config["batch_threads"])
    try:
        model.load()
    except LLMError as error:
        send({"error": str(error)})
        return 1
    send({"ready": {"seconds": round(time.perf_counter() - started, 3),
                    "threads": model.threads, "batch_threads": model.batch_threads}})
    while True:
        request = requests.get()
        try:
            if request["op"] == "count":
                send({"tokens": model.count_tokens(request["text"])})
                continue
            stream = model.stream(request["messages"], request["max_tokens"])
            for piece in stream:
                if request["id"] in cancelled:
                    stream.close()
                    send({"end": "cancelled"})
                    break
                send({"token": piece})
            else:
                send({"end": "done"})
        except Exception as error:  # reported to the parent; the process stays up
            send({"error": f"{type(error).__name__}: {error}"})


def main() -> int:
    """Entry point of the child: `python -m ragserver.model_process CONFIG_JSON`."""
    config = json.loads(sys.argv[1])
    # The protocol gets its own copy of stdout; fd 1 then points at stderr, so anything
    # native code prints cannot corrupt it.
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    return _serve(config, out)


if __name__ == "__main__":
    sys.exit(main())
