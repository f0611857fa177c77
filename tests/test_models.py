"""Answer models by name: the installed files, the joined Qwen file and its pinned hash."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from ragserver import models
from ragserver.config import load_settings
from ragserver.llm import LLMError, load_chat_model, resolve_gguf


def test_names_resolve_to_the_installed_files(tmp_path):
    assert resolve_gguf("smollm2").name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    qwen = resolve_gguf("qwen-coder-0.5b")
    assert qwen.name == models.QWEN_CODER.file_name
    assert qwen.stat().st_size == models.QWEN_CODER.size
    assert resolve_gguf("") == qwen  # the default
    assert resolve_gguf("none") is None and resolve_gguf("NONE") is None
    assert load_chat_model(load_settings({"RAGSERVER_LLM_MODEL": "none"})) is None
    own = tmp_path / "mine.gguf"
    own.write_bytes(b"GGUF")
    assert resolve_gguf(str(own)) == own
    with pytest.raises(LLMError, match="'qwen': not a file, and not one of the names "
                                       "smollm2, qwen-coder-0.5b, none"):
        resolve_gguf("qwen")


def test_joined_parts_are_kept_only_with_the_pinned_hash(tmp_path):
    parts = []
    for i, data in enumerate([b"GGUF first part ", b"second part"]):
        parts.append(tmp_path / f"part{i}.bin")
        parts[-1].write_bytes(data)
    good = hashlib.sha256(b"GGUF first part second part").hexdigest()
    model = replace(models.QWEN_CODER, file_name="t.gguf", size=27, sha256=good)
    target = tmp_path / "models" / "t.gguf"
    assert models.join_parts(model, parts, target) == target
    assert target.read_bytes() == b"GGUF first part second part"
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    target.unlink()
    parts[1].write_bytes(b"second part, tampered")
    with pytest.raises(models.ModelFileError, match="refusing to use it"):
        models.join_parts(model, parts, target)
    assert not target.exists() and list(target.parent.iterdir()) == []  # nothing left behind


def test_the_joined_file_goes_where_ragserver_model_dir_says(tmp_path):
    settings = load_settings({"RAGSERVER_MODEL_DIR": str(tmp_path)})
    path = resolve_gguf(settings.llm_model, settings.model_dir)  # joins the parts again
    assert path == tmp_path / models.QWEN_CODER.file_name
    assert models.sha256(path) == models.QWEN_CODER.sha256
    assert models.identify(path) is models.QWEN_CODER
