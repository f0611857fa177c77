"""The Procfile's gunicorn on a free port of 127.0.0.1, for tests and benchmarks alike.

Tests import it as `server` (pytest puts tests/ on sys.path); the benchmarks, which put
the repository root on sys.path, as `tests.server`. It needs nothing but the standard
library (psutil only for `worker()`), so a test run needs no benchmark extras.
"""

from __future__ import annotations

import http.client
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START_SECONDS = 60  # the worker imports torch and Flask before it answers anything
STOP_SECONDS = 40  # past --graceful-timeout (30 s): a stop that takes longer is killed


def procfile_command(port: int) -> list[str]:
    """The Procfile's web: command, bound to 127.0.0.1:port, with this venv's gunicorn."""
    line = next(x for x in (ROOT / "Procfile").read_text().splitlines() if x.startswith("web:"))
    args = shlex.split(line.removeprefix("web:"))
    args[args.index("--bind") + 1] = f"127.0.0.1:{port}"
    args[0] = str(Path(sys.executable).parent / args[0])
    return args


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """gunicorn from the Procfile serving `db`: entered once /healthz answers, stopped on exit.

    Rate limits are off unless `env` sets them: every client of a test or a benchmark is
    127.0.0.1, and the search benchmark's 120 searches a minute ran into
    RAGSERVER_SEARCH_RATE. The log goes to `log`, kept; without one, to a file in the
    temporary folder that is removed after a clean stop (kept when something went wrong).
    """

    def __init__(self, db: Path, env: dict[str, str] | None = None, log: Path | None = None):
        self.db = db
        self.env = {"RAGSERVER_ASK_RATE": "0", "RAGSERVER_SEARCH_RATE": "0", **(env or {})}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._own_log = log is None
        self.log = log or Path(tempfile.gettempdir()) / f"ragserver-gunicorn-{self.port}.log"
        self.stop_seconds: float | None = None

    def __enter__(self) -> "Server":
        env = {**os.environ, "RAGSERVER_DB": str(self.db), **self.env}
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(procfile_command(self.port), cwd=ROOT, env=env,
                                            stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_SECONDS
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__(RuntimeError)
                raise RuntimeError(f"gunicorn did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        return self

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(self.url + "/healthz", timeout=5).close()
        except urllib.error.HTTPError as error:
            return error.code == 503  # no database or no answer model: serving all the same
        except OSError:
            return False
        return True

    def health(self) -> dict:
        """GET /healthz as JSON (also on 503, which still describes the server)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/healthz")
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def search(self, query: str, mode: str = "hybrid") -> tuple[float, dict]:
        """(seconds seen by the client, JSON) of one GET /api/search."""
        url = f"{self.url}/api/search?" + urllib.parse.urlencode({"q": query, "mode": mode})
        started = time.perf_counter()
        reply = json.load(urllib.request.urlopen(url, timeout=300))
        return time.perf_counter() - started, reply

    def worker(self):
        """The gunicorn worker process (the master's child), as a psutil.Process."""
        import psutil

        return psutil.Process(self.process.pid).children()[0]

    def __exit__(self, *exc) -> None:
        stopping = time.perf_counter()
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.stop_seconds = time.perf_counter() - stopping
        if self._own_log and (not exc or exc[0] is None):
            self.log.unlink()
