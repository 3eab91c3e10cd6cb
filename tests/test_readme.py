"""Every ```python block of README.md, docs/index.md and docs/guides/*.md runs, as written, on the tiny
pipelines of fastsample.testing.

A block runs on the pipelines named by the ``<!-- snippet: NAME, ... -->`` line just above it (``once``: run
once without a pipeline; ``skip: REASON``: not run, and the page must say why); a block with no such line
runs on every pipeline. Blocks of one page run in order in one namespace per pipeline, so a block defining
``inputs`` feeds the blocks after it; the namespace starts with ``pipe`` (a fresh tiny pipeline) and
``inputs`` (:func:`fastsample.testing.call_kwargs`, with CFG on). To keep the suite fast, calls of ``pipe``
run 2 steps at the fixture's image size: the only change made to what the snippet says.
"""

from __future__ import annotations

import functools
import inspect
import re
from pathlib import Path

import pytest

from fastsample.testing import IMAGE_SIZE, PIPELINE_NAMES, call_kwargs, tiny_pipeline

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "docs" / "index.md", *sorted((ROOT / "docs" / "guides").glob("*.md"))]
_BLOCK = re.compile(r"(?:<!--\s*snippet:\s*(?P<marker>[^>]*?)\s*-->\s*\n)?```python\n(?P<code>.*?)```", re.S)


def blocks(page: Path) -> list[tuple[int, str, str]]:
    """``(line, marker, code)`` of every python block of ``page`` (marker ``"all"`` when absent)."""
    text = page.read_text()
    found = []
    for match in _BLOCK.finditer(text):
        line = text.count("\n", 0, match.start("code"))
        found.append((line, (match.group("marker") or "all").strip(), match.group("code")))
    return found


def targets(marker: str) -> list[str]:
    if marker == "all":
        return list(PIPELINE_NAMES)
    if marker == "once" or marker.startswith("skip:"):
        return [marker.split(":")[0]]
    names = [name.strip() for name in marker.split(",")]
    unknown = [name for name in names if name not in PIPELINE_NAMES]
    assert not unknown, f"unknown pipeline(s) {unknown} in <!-- snippet: {marker} -->"
    return names


def _small(pipe):
    """The same pipeline whose calls run 2 steps at the fixture's image size (nothing else changes)."""
    cls = type(pipe)
    original = cls.__call__
    parameters = set(inspect.signature(original).parameters)

    @functools.wraps(original)
    def call(self, *args, **kwargs):
        kwargs["num_inference_steps"] = 2
        kwargs.setdefault("output_type", "np")
        if "height" in parameters:
            kwargs["height"] = kwargs["width"] = IMAGE_SIZE
        if "use_resolution_binning" in parameters:
            kwargs["use_resolution_binning"] = False  # binning knows the real sample sizes only
        if "clean_caption" in parameters:
            kwargs["clean_caption"] = False  # needs bs4/ftfy
        return original(self, *args, **kwargs)

    pipe.__class__ = type(cls.__name__, (cls,), {"__call__": call})
    return pipe


def _cases():
    for page in PAGES:
        per_pipeline: dict[str, list[tuple[int, str]]] = {}
        for line, marker, code in blocks(page):
            for target in targets(marker):
                per_pipeline.setdefault(target, []).append((line, code))
        for target, codes in per_pipeline.items():
            if target == "skip":
                continue
            yield pytest.param(page, target, codes, id=f"{page.relative_to(ROOT)}-{target}")


def test_pages_have_snippets():
    assert any(blocks(ROOT / "README.md")), "README.md has no python block"
    for page in PAGES:
        for line, marker, _ in blocks(page):
            if marker.startswith("skip:"):
                assert marker[5:].strip(), f"{page.name}:{line}: a skipped block says why"


def run_blocks(name: str, target: str, codes: list[tuple[int, str]]) -> None:
    """Run a page's blocks for ``target`` in one namespace (see the module docstring)."""
    if target not in ("once", "dit"):
        pytest.importorskip("transformers")
    namespace: dict = {"__name__": "__snippet__"}
    if target != "once":
        namespace["pipe"] = _small(tiny_pipeline(target))
        namespace["inputs"] = {
            k: v for k, v in call_kwargs(target).items() if k not in ("num_inference_steps", "generator")
        }
    for line, code in codes:
        try:
            exec(compile(code, f"{name}:{line}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"{name} line {line} fails on {target}: {error!r}") from error


@pytest.mark.parametrize("page, target, codes", list(_cases()))
def test_snippets_run(page, target, codes):
    run_blocks(page.name, target, codes)


def test_an_untrue_snippet_fails(tmp_path):
    """The README's old DiT call (a prompt for a class-conditional pipeline) is caught."""
    page = tmp_path / "page.md"
    page.write_text(
        '<!-- snippet: dit -->\n```python\nimage = pipe("a cat", guidance_scale=15).images[0]\n```\n'
    )
    [(line, marker, code)] = blocks(page)
    assert targets(marker) == ["dit"]
    with pytest.raises(AssertionError, match="page.md line 2 fails on dit"):
        run_blocks(page.name, "dit", [(line, code)])
