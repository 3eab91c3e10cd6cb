"""A sampling recipe as a small JSON file: what ``fastsample tune`` chooses and
``fs.optimize(pipe, recipe=...)`` applies.

A recipe names one point of the search space of :mod:`fastsample.tune`: a scheduler (a preset shortcut of
:mod:`fastsample.solvers.presets`, fastsample's or a diffusers baseline such as ``"dpm++2m"``), the number of
inference steps, a guidance method (``None``: the pipeline's own CFG) with its options, a feature cache with
its knobs, an attention path and the exact DiT savings. It carries its provenance: the hash of the denoiser it
was tuned on (:func:`fastsample.solvers.grid_fit.model_hash`), the pipeline class, the guidance scale, the
device and the versions, and the figures measured for it (paired fidelity to the model's own reference, cost).
Applying it to another model is refused: a recipe's quality figures hold only for the model they were measured
on.

File format (``format: "fastsample-recipe"``, ``version: 1``)::

    {"format": "fastsample-recipe", "version": 1,
     "scheduler": "ghvb", "num_inference_steps": 8,
     "guidance": "ag", "guidance_options": {"threshold": 0.99},
     "cache": "fora", "cache_options": {"interval": 2},
     "attention": null, "dit_savings": false,
     "provenance": {"model_hash": "…", "pipeline": "PixelDiTPipeline", "guidance_scale": 4.0, …},
     "figures": {"psnr_db": 31.2, "cost": 9.0, …}}
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
from dataclasses import dataclass, field
from typing import Any

from fastsample.errors import ArtifactError, read_json, require_fields

FORMAT = "fastsample-recipe"
VERSION = 1
_REQUIRED = ("format", "version", "scheduler", "num_inference_steps", "provenance")

__all__ = ["FORMAT", "VERSION", "SamplingRecipe", "load_recipe", "denoiser_hash"]


def denoiser_hash(pipe: Any) -> str:
    """The provenance hash of ``pipe``'s denoiser (transformer or UNet): sha256 of its weights (16 hex
    digits)."""
    from fastsample.integration.adapters import resolve_denoiser
    from fastsample.solvers.grid_fit import model_hash

    return model_hash(resolve_denoiser(pipe))


def _check_options(name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"`{name}` must be a dict with string keys, got {value!r}")
    return dict(value)


@dataclass(frozen=True)
class SamplingRecipe:
    """One tuned configuration (see the module docstring for the file format).

    Attributes:
        scheduler: a shortcut of :mod:`fastsample.solvers.presets` (fastsample's or a diffusers baseline).
        num_inference_steps: sampling steps (for the pipeline call: ``pipe(..., **handle.call_kwargs)``).
        scheduler_options: ``from_config`` overrides of the preset, e.g. the grid ``{"grid": "spacing"}``.
        guidance: a name of :data:`fastsample.guidance.methods.METHODS` or ``None`` (the pipeline's CFG).
        guidance_options: keyword arguments of that method.
        cache: a method of :func:`fastsample.cache.enable_cache` (``"fora"``, ``"taylorseer"``…) or ``None``.
        cache_options: its knobs (``{"interval": 2}``).
        attention: ``None`` or a :func:`fastsample.kernels.set_attention` backend.
        dit_savings: whether the exact DiT savings are on.
        provenance: ``model_hash`` (required to apply it), ``pipeline``, ``guidance_scale``, ``device``,
            versions, ``created``.
        figures: what was measured for this recipe (free-form numbers: ``psnr_db``, ``cost``, ``latency_s``…).
    """

    scheduler: str
    num_inference_steps: int
    scheduler_options: dict[str, Any] = field(default_factory=dict)
    guidance: str | None = None
    guidance_options: dict[str, Any] = field(default_factory=dict)
    cache: str | None = None
    cache_options: dict[str, Any] = field(default_factory=dict)
    attention: str | None = None
    dit_savings: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from fastsample.guidance.methods import METHODS as GUIDANCE_METHODS
        from fastsample.solvers.presets import BASELINE_SHORTCUTS, SHORTCUTS

        if self.scheduler not in SHORTCUTS + BASELINE_SHORTCUTS:
            raise ValueError(
                f"`scheduler` must be one of {SHORTCUTS + BASELINE_SHORTCUTS}, got {self.scheduler!r}"
            )
        steps = self.num_inference_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"`num_inference_steps` must be an int >= 1, got {steps!r}")
        if self.guidance is not None and self.guidance not in GUIDANCE_METHODS:
            raise ValueError(
                f"`guidance` must be None or one of {tuple(GUIDANCE_METHODS)}, got {self.guidance!r}"
            )
        if self.cache is not None and not isinstance(self.cache, str):
            raise ValueError(f"`cache` must be None or a cache method name, got {self.cache!r}")
        if self.attention is not None and not isinstance(self.attention, str):
            raise ValueError(f"`attention` must be None or a backend name, got {self.attention!r}")
        if not isinstance(self.dit_savings, bool):
            raise ValueError(f"`dit_savings` must be a bool, got {self.dit_savings!r}")
        for name in ("scheduler_options", "guidance_options", "cache_options", "provenance", "figures"):
            object.__setattr__(self, name, _check_options(name, getattr(self, name)))

    # ------------------------------------------------------------------------------------------- naming
    @property
    def name(self) -> str:
        """A short label: ``ghvb-8+ag+fora(interval=2)``, ``ghvb(grid=spacing)-8``."""
        parts = [f"{self.scheduler}{_knobs(self.scheduler_options)}-{self.num_inference_steps}"]
        if self.guidance is not None:
            parts.append(f"{self.guidance}{_knobs(self.guidance_options)}")
        if self.cache is not None:
            parts.append(f"{self.cache}{_knobs(self.cache_options)}")
        if self.attention is not None:
            parts.append(f"attn-{self.attention}")
        if self.dit_savings:
            parts.append("dit-savings")
        return "+".join(parts)

    # -------------------------------------------------------------------------------------- application
    def optimize_arguments(self, pipe: Any) -> dict[str, Any]:
        """The keyword arguments of :func:`fastsample.optimize.optimize` that apply this recipe to ``pipe``
        (the scheduler built from ``pipe.scheduler.config`` for the pipeline's schedule family)."""
        from fastsample.guidance.methods import METHODS as GUIDANCE_METHODS
        from fastsample.solvers.presets import build

        guidance = None if self.guidance is None else GUIDANCE_METHODS[self.guidance](**self.guidance_options)
        cache = None if self.cache is None else (self.cache, dict(self.cache_options))
        options = self.scheduler_options
        return {
            "scheduler": build(self.scheduler, pipe.scheduler.config, baselines=True, **options),
            "guidance": guidance,
            "cache": cache,
            "attention": self.attention,
            "dit_savings": self.dit_savings,
        }

    @property
    def call_kwargs(self) -> dict[str, Any]:
        """What the pipeline call needs besides the optimize step: ``{"num_inference_steps": N}``."""
        return {"num_inference_steps": self.num_inference_steps}

    def check_model(self, pipe: Any, source: str | os.PathLike = "recipe") -> None:
        """Refuse a recipe tuned on another model (its denoiser hash differs from ``pipe``'s)."""
        expected = self.provenance.get("model_hash")
        if not expected:
            raise ArtifactError(source, "a recipe with provenance.model_hash", "no model_hash in provenance")
        actual = denoiser_hash(pipe)
        if actual != expected:
            raise ValueError(
                f"recipe {os.fspath(source)!r} was tuned on another model (denoiser hash {expected}, this "
                f"pipeline's is {actual}); its quality figures do not hold here. Run `fastsample tune` on "
                "this model."
            )

    # ---------------------------------------------------------------------------------------------- I/O
    def to_dict(self) -> dict[str, Any]:
        """The JSON object written by :meth:`save`."""
        return {"format": FORMAT, "version": VERSION, **dataclasses.asdict(self)}

    def save(self, path: str | os.PathLike) -> None:
        """Write the recipe as JSON (UTF-8, indented)."""
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=2, sort_keys=False)
            handle.write("\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | os.PathLike = "recipe") -> SamplingRecipe:
        """Build from a parsed recipe file (an :class:`~fastsample.errors.ArtifactError` if it is wrong)."""
        expected = f"a {FORMAT} JSON file (version {VERSION})"
        require_fields(source, data, _REQUIRED, expected)
        if data["format"] != FORMAT or data["version"] != VERSION:
            raise ArtifactError(source, expected, f"format {data['format']!r} version {data['version']!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"format", "version"})
        if unknown:
            raise ArtifactError(source, expected, f"unknown field(s) {unknown}")
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except ValueError as error:
            raise ArtifactError(source, expected, str(error)) from error

    @staticmethod
    def provenance_for(pipe: Any, guidance_scale: float | None = None, **extra: Any) -> dict[str, Any]:
        """The provenance of a recipe tuned on ``pipe`` now: model hash, pipeline, device, versions, time."""
        import diffusers
        import torch

        import fastsample
        from fastsample.integration.adapters import resolve_denoiser

        denoiser = resolve_denoiser(pipe)
        parameter = next(denoiser.parameters(), None)
        return {
            "model_hash": denoiser_hash(pipe),
            "pipeline": type(pipe).__name__,
            "guidance_scale": guidance_scale,
            "device": str(parameter.device) if parameter is not None else "cpu",
            "dtype": str(parameter.dtype).removeprefix("torch.") if parameter is not None else None,
            "fastsample": fastsample.__version__,
            "diffusers": diffusers.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            **extra,
        }


def _knobs(options: dict[str, Any]) -> str:
    return "(" + ",".join(f"{k}={v}" for k, v in sorted(options.items())) + ")" if options else ""


def load_recipe(path: str | os.PathLike) -> SamplingRecipe:
    """Read a recipe file written by ``fastsample tune`` (JSON only; nothing is executed)."""
    return SamplingRecipe.from_dict(read_json(path, f"a {FORMAT} JSON file"), source=path)
