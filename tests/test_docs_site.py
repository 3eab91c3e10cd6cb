"""The documentation site builds in strict mode (broken links, bad references and docstring warnings fail)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("mkdocs")
pytest.importorskip("material")
pytest.importorskip("mkdocstrings_handlers.python")
pytest.importorskip("mkdocs_jupyter")


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "FASTSAMPLE_DOCS_EXECUTE": "false"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    site = tmp_path / "site"
    for page in ("index.html", "guides/guidance/index.html", "api/solvers/index.html"):
        assert (site / page).is_file(), page
    assert "GHVBScheduler" in (site / "api/solvers/index.html").read_text()
    results = sorted(p.stem for p in (ROOT / "benchmarks/results").glob("*.md"))
    assert results and all((site / "results" / name / "index.html").is_file() for name in results)
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert all((site / "notebooks" / name / "index.html").is_file() for name in notebooks)
