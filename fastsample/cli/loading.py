"""The one pipeline loader of the command line: ``embedded``, ``fixture:NAME`` or a local folder.

``load_pipeline(spec)`` understands three spellings, the same in every command that takes ``--pipeline``:

* ``"embedded"`` (= ``"embedded:vp"``) or ``"embedded:flow"``: the small pixel-space DiTs shipped in the
  package, VP (ε) or rectified flow (:func:`fastsample.zoo.default.load_default_pipeline`);
* ``"fixture:NAME"``: a tiny random-weight diffusers pipeline of :mod:`fastsample.testing` (``NAME`` one of
  :data:`fastsample.testing.PIPELINE_NAMES`; the text pipelines need ``transformers``);
* a path: a folder written by ``save_pretrained``, loaded with ``local_files_only=True`` (a
  ``PixelDiTPipeline`` folder with fastsample's own class, any other with ``DiffusionPipeline``).

Nothing is ever downloaded. Mistakes raise ``ValueError`` / ``FileNotFoundError`` / ``ImportError`` that name
the spec and what is allowed, before anything heavy is built.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "EMBEDDED",
    "EMBEDDED_MODELS",
    "FIXTURE_PREFIX",
    "LoadedPipeline",
    "describe_files",
    "load_pipeline",
]

EMBEDDED = "embedded"
#: ``--pipeline`` spellings of the shipped models -> ``load_default_pipeline(model=...)``
EMBEDDED_MODELS = {EMBEDDED: "vp", "embedded:vp": "vp", "embedded:flow": "flow"}
FIXTURE_PREFIX = "fixture:"


@dataclass
class LoadedPipeline:
    """A loaded pipeline with where it came from: ``kind`` is ``"embedded"``, ``"fixture"`` or ``"path"``;
    ``fixture`` the fixture name (else ``None``); ``description`` names the weights (file hashes and dates
    for ``embedded`` and paths)."""

    pipe: Any
    spec: str
    kind: str
    fixture: str | None
    description: str


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_files(paths: Sequence[Path]) -> str:
    """``name sha256 <16 hex> (modified <date> UTC)`` for each file, ``;``-separated."""
    parts = []
    for path in paths:
        modified = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.UTC)
        parts.append(f"{path.name} sha256 {_file_sha256(path)[:16]} (modified {modified:%Y-%m-%d %H:%M} UTC)")
    return "; ".join(parts) or "no weights files found"


def load_pipeline(
    spec: str = EMBEDDED, *, device: str = "cpu", dtype: str | Any = "float32", seed: int = 0
) -> LoadedPipeline:
    """Load the pipeline named by ``spec`` (``"embedded"``, ``"fixture:NAME"`` or a local folder) on
    ``device`` in ``dtype`` (a ``torch.dtype`` or its name); ``seed`` seeds a fixture's random weights.
    The progress bar of the pipeline is disabled (commands show their own)."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"pipeline must be 'embedded', 'fixture:NAME' or a folder path, got {spec!r}")
    if spec.startswith(FIXTURE_PREFIX):
        name = spec[len(FIXTURE_PREFIX) :]
        from fastsample.testing import PIPELINE_NAMES  # light: the builders import diffusers when called

        if name not in PIPELINE_NAMES:
            raise ValueError(
                f"unknown fixture {name!r} in {spec!r}; expected fixture:NAME with NAME one of "
                f"{', '.join(PIPELINE_NAMES)}"
            )
    elif spec not in EMBEDDED_MODELS:
        folder = Path(spec)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{spec!r} is not 'embedded', 'fixture:NAME' or an existing pipeline folder "
                "(nothing is downloaded)"
            )
        if not (folder / "model_index.json").is_file():
            raise FileNotFoundError(
                f"{spec!r} has no model_index.json: not a folder written by save_pretrained"
            )

    import torch

    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"dtype must be a torch dtype or its name, got {dtype!r}")
    if spec in EMBEDDED_MODELS:
        import importlib.resources

        from fastsample.zoo.default import DIT_WEIGHTS_FILE, load_default_pipeline

        model = EMBEDDED_MODELS[spec]
        folder_parts = ("weights",) if model == "vp" else ("weights", "flow")
        resource = importlib.resources.files("fastsample.zoo").joinpath(*folder_parts, DIT_WEIGHTS_FILE)
        with importlib.resources.as_file(resource) as path:
            description = f"embedded default DiT ({model}): " + describe_files([Path(path)])
        pipe = load_default_pipeline(device=device, dtype=torch_dtype, model=model)
        loaded = LoadedPipeline(pipe, spec, "embedded", None, description)
    elif spec.startswith(FIXTURE_PREFIX):
        from fastsample.testing import tiny_pipeline

        pipe = tiny_pipeline(name, seed=seed, dtype=torch_dtype).to(device)
        loaded = LoadedPipeline(
            pipe, spec, "fixture", name, f"fastsample.testing fixture {name!r} (seed {seed})"
        )
    else:
        class_name = json.loads((folder / "model_index.json").read_text()).get("_class_name")
        if class_name == "PixelDiTPipeline":
            from fastsample.pipelines.pixel_dit import PixelDiTPipeline as cls
        else:
            from diffusers import DiffusionPipeline as cls
        pipe = cls.from_pretrained(spec, local_files_only=True).to(device=device, dtype=torch_dtype)
        files = [p for p in sorted(folder.glob("*/*")) if p.suffix in (".safetensors", ".bin")]
        loaded = LoadedPipeline(
            pipe, spec, "path", None, f"{class_name} from {spec}: " + describe_files(files)
        )
    if hasattr(loaded.pipe, "set_progress_bar_config"):
        loaded.pipe.set_progress_bar_config(disable=True)
    return loaded
