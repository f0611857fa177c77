"""The wheel: ingest ships inside ragserver's namespace, with the pages beside the code."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

from conftest import ROOT


def test_the_wheel_ships_ingest_as_ragserver_ingest(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True,
                   timeout=600)
    wheel = next((tmp_path / "dist").glob("ragserver-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"ragserver/ingest/pipeline.py", "ragserver/ingest/formats/__init__.py",
            "ragserver/storage/sqlite.py", "ragserver/templates/base.html",
            "ragserver/static/ragserver-search.js"} <= set(names)
    assert not [n for n in names if n.startswith("ingest/")]  # no top-level package

    # Installed from the wheel alone (not this checkout), ingest is found in ragserver.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=600)
    code = ("import ragserver, ragserver.ingest.pipeline as p, ragserver.ingest.formats as f; "
            "print(ragserver.__file__); print(p.__file__); print([x.name for x in f.FORMATS])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONPATH": str(target)})
    package, pipeline, formats = out.stdout.splitlines()
    assert package.startswith(str(target)) and pipeline.startswith(str(target / "ragserver"))
    assert "text" in formats and "markdown" in formats
