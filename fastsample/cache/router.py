"""HarmoniCa's router (Huang et al., ICML 2025, arXiv 2410.01723), its artifact, and its inference policy.

The router is one logit vector θ_k ∈ R^U per sampling step k over the U cacheable units; it is input
invariant, so it is a static schedule. Row 0 is fixed at +5 (step 0 always computes and fills the cache);
the other rows are trained (see :mod:`fastsample.cache.train`) and clamped to [-5, 5]. At inference unit u
computes at step k iff ``sigmoid(θ_k,u) > τ`` (τ = 0.1 in the paper), otherwise it reuses its cached output.

A router only makes sense for the (model, scheduler, timesteps, guidance) it was trained with, so the
artifact stores them and :class:`HarmoniCaPolicy` refuses any mismatch.

**Caveat: opt-in, and not better than FORA here.** On the embedded DiT (DPM-Solver++ 2M, 20 steps, CFG 4)
every router trained with this objective lost to the static FORA(2) schedule at equal or lower compute
(21.8–25.3 dB against 27.3 dB paired PSNR; started at FORA(2)'s own schedule, training moved away from it and
lost 3.8 dB). The measured cause is the training signal: HarmoniCa's per-step proxy Σ_k λ_k · MSE(ε̂_k, ε*_k)
scores a schedule shaped like the trained routers' 1.9× better than FORA(2) although its images are 7 dB
worse at more compute (``benchmarks/harmonica_proxy.py``; benchmarks/results/cache.md, sections (b2), (f)).
Use a router only after measuring it against FORA(N) on your model; ``enable_cache(pipe, "fora")`` or
``"taylorseer"`` is the default recommendation.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastsample.cache.policies import StaticSchedule
from fastsample.cache.units import CacheSite

FIXED_FIRST_LOGIT = 5.0
LOGIT_BOUND = 5.0
WEIGHTS_NAME = "router.safetensors"
CONFIG_NAME = "router_config.json"


def model_config_hash(model: torch.nn.Module) -> str:
    """sha256 of the model's public config (keys not starting with ``_``), as sorted JSON."""
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def inference_mask(logits: torch.Tensor, threshold: float) -> np.ndarray:
    """HarmoniCa's schedule: unit u computes at step k iff ``sigmoid(logits[k, u]) > τ``, as a bool
    ``[steps, units]`` array; step 0 always computes."""
    mask = (torch.sigmoid(logits.detach().cpu()) > threshold).numpy()
    mask[0] = True
    return mask


class Router(torch.nn.Module):
    """Per-step logits: ``logits[0] = +5`` (fixed), ``logits[1:] = θ`` (trainable).

    θ starts from N(0, 1) (the paper), or, with ``init_mask`` (bool ``[num_steps, num_units]``, ``True`` =
    compute, e.g. FORA(2)'s schedule), at ``+init_logit`` where the mask computes and ``-init_logit`` where it
    reuses, so that the untrained router's inference mask (``sigmoid(θ) > τ``) is that schedule for every
    ``τ`` in ``(sigmoid(-init_logit), sigmoid(init_logit))``.
    """

    def __init__(
        self,
        num_steps: int,
        num_units: int,
        generator: torch.Generator | None = None,
        init_mask: np.ndarray | None = None,
        init_logit: float = 3.0,
    ) -> None:
        super().__init__()
        if num_steps < 2 or num_units < 1:
            raise ValueError(
                f"a router needs num_steps >= 2 and num_units >= 1, got {num_steps}, {num_units}."
            )
        if init_mask is None:
            theta = torch.randn(num_steps - 1, num_units, generator=generator)
        else:
            mask = np.asarray(init_mask)
            if mask.dtype != np.bool_ or mask.shape != (num_steps, num_units):
                raise ValueError(
                    f"init_mask must be a boolean [{num_steps}, {num_units}] array, got "
                    f"{mask.dtype} {mask.shape}."
                )
            if not 0 < init_logit <= LOGIT_BOUND:
                raise ValueError(f"init_logit must be in (0, {LOGIT_BOUND}], got {init_logit!r}.")
            theta = torch.where(torch.from_numpy(mask[1:].copy()), init_logit, -init_logit).float()
        self.theta = torch.nn.Parameter(theta)
        self.register_buffer("first", torch.full((1, num_units), FIXED_FIRST_LOGIT), persistent=False)

    @property
    def logits(self) -> torch.Tensor:
        return torch.cat([self.first, self.theta], dim=0)

    def forward(self, step: int) -> torch.Tensor:
        """Scores r_k = sigmoid(θ_k) of step ``k`` (differentiable for k ≥ 1)."""
        if step == 0:
            return torch.sigmoid(self.first[0])
        return torch.sigmoid(self.theta[step - 1])

    @torch.no_grad()
    def clamp_(self) -> None:
        self.theta.clamp_(-LOGIT_BOUND, LOGIT_BOUND)


@dataclass
class RouterArtifact:
    """Trained logits ``[steps, units]`` plus the metadata they are only valid for."""

    logits: torch.Tensor
    model_class: str
    model_config_hash: str
    unit_names: list[str]
    scheduler_class: str
    timesteps: list[float]
    guidance_scale: float
    threshold: float = 0.1
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.logits = torch.as_tensor(self.logits, dtype=torch.float32).detach().cpu()
        if self.logits.ndim != 2 or self.logits.shape != (len(self.timesteps), len(self.unit_names)):
            raise ValueError(
                f"logits shape {tuple(self.logits.shape)} does not match {len(self.timesteps)} timesteps x "
                f"{len(self.unit_names)} units."
            )
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold τ must be in (0, 1), got {self.threshold}.")

    @property
    def num_steps(self) -> int:
        return int(self.logits.shape[0])

    def mask(self, threshold: float | None = None) -> np.ndarray:
        """:func:`inference_mask` of the trained logits at ``threshold`` (default: the artifact's τ)."""
        return inference_mask(self.logits, self.threshold if threshold is None else threshold)

    def metadata(self) -> dict[str, Any]:
        return {
            "format": "fastsample-harmonica-router/1",
            "model_class": self.model_class,
            "model_config_hash": self.model_config_hash,
            "unit_names": self.unit_names,
            "scheduler_class": self.scheduler_class,
            "timesteps": self.timesteps,
            "guidance_scale": self.guidance_scale,
            "threshold": self.threshold,
            "training": self.training,
        }

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``router.safetensors`` (the logits) and ``router_config.json`` (the metadata)."""
        from safetensors.torch import save_file

        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        save_file({"logits": self.logits.contiguous()}, str(path / WEIGHTS_NAME))
        (path / CONFIG_NAME).write_text(json.dumps(self.metadata(), indent=2))
        return path

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> RouterArtifact:
        """Read a folder written by :meth:`save_pretrained`. A corrupt or foreign file raises
        :class:`~fastsample.errors.ArtifactError` naming it."""
        from fastsample.errors import ArtifactError, read_json, read_safetensors, reading, require_fields

        path = Path(directory)
        if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(
                f"{path} is not a router artifact (needs {CONFIG_NAME} and {WEIGHTS_NAME})."
            )
        config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
        expected = "a fastsample HarmoniCa router config (JSON, format fastsample-harmonica-router/1)"
        meta = read_json(config_file, expected)
        if meta.pop("format", None) != "fastsample-harmonica-router/1":
            raise ArtifactError(config_file, expected, "no 'format': 'fastsample-harmonica-router/1' entry")
        require_fields(config_file, meta, _ROUTER_FIELDS, expected)
        unknown = sorted(set(meta) - set(_ROUTER_FIELDS) - {"threshold", "training"})
        if unknown:
            raise ArtifactError(config_file, expected, f"unknown field(s) {unknown}")
        types = {
            "model_class": str,
            "model_config_hash": str,
            "unit_names": list,
            "scheduler_class": str,
            "timesteps": list,
            "guidance_scale": (int, float),
            "threshold": (int, float),
            "training": dict,
        }
        wrong = [k for k, t in types.items() if k in meta and (not isinstance(meta[k], t) or meta[k] is True)]
        if wrong:
            raise ArtifactError(config_file, expected, f"field(s) {wrong} of the wrong type")
        tensors = read_safetensors(weights_file, "a safetensors file with a float 'logits' tensor")
        logits = tensors.get("logits")
        if logits is None or not logits.is_floating_point():
            raise ArtifactError(
                weights_file, "a safetensors file with a float 'logits' tensor", f"tensors {sorted(tensors)}"
            )
        with reading(path, "router logits of shape [timesteps, units] matching its config"):
            return cls(logits=logits, **meta)


_ROUTER_FIELDS = (
    "model_class",
    "model_config_hash",
    "unit_names",
    "scheduler_class",
    "timesteps",
    "guidance_scale",
)


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), atol=1e-4)


class HarmoniCaPolicy(StaticSchedule):
    """Hard inference schedule of a trained router: unit u computes at step k iff ``sigmoid(θ_k,u) > τ``.

    Opt-in: on the embedded DiT, trained routers lose to FORA(2) at equal compute (module docstring).

    Refuses (``ValueError``) a model whose class, config hash or units differ from the artifact's, a pipeline
    whose scheduler class, timesteps or guidance scale differ, and a guidance scale passed here that differs.
    """

    name = "harmonica"

    def __init__(
        self,
        router: RouterArtifact | str | os.PathLike,
        threshold: float | None = None,
        guidance_scale: float | None = None,
    ) -> None:
        if isinstance(router, (str, os.PathLike)):
            router = RouterArtifact.from_pretrained(router)
        if not isinstance(router, RouterArtifact):
            raise TypeError(f"router must be a RouterArtifact or a directory, got {type(router).__name__}.")
        if threshold is not None and not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"threshold τ must be in (0, 1), got {threshold!r}.")
        if guidance_scale is not None and not np.isclose(float(guidance_scale), router.guidance_scale):
            raise ValueError(
                f"router was trained for guidance_scale={router.guidance_scale}, "
                f"got guidance_scale={guidance_scale}."
            )
        self.router = router
        self.threshold = router.threshold if threshold is None else float(threshold)
        super().__init__(router.mask(self.threshold), level="unit")

    def bind(self, model: torch.nn.Module, sites: list[CacheSite]) -> None:
        problems = []
        if type(model).__name__ != self.router.model_class:
            problems.append(f"model class {type(model).__name__} != {self.router.model_class}")
        if model_config_hash(model) != self.router.model_config_hash:
            problems.append("model config hash differs (another architecture or size)")
        if [s.name for s in sites] != self.router.unit_names:
            problems.append("unit names differ")
        if problems:
            raise ValueError("HarmoniCa router does not match this model: " + "; ".join(problems) + ".")

    def check_call(
        self, step: int, timestep: Any, pipe: Any | None, call_args: dict[str, Any] | None = None
    ) -> None:
        expected = self.router.timesteps
        if pipe is not None:
            scheduler = pipe.scheduler
            problems = []
            if type(scheduler).__name__ != self.router.scheduler_class:
                problems.append(f"scheduler {type(scheduler).__name__} != {self.router.scheduler_class}")
            actual = [float(t) for t in torch.as_tensor(scheduler.timesteps).reshape(-1).tolist()]
            if not _close(actual, expected):
                problems.append(f"timesteps {actual} != {expected}")
            from fastsample.integration.adapters import get_adapter

            scale = get_adapter(pipe).guidance_scale(pipe, call_args)
            if scale is not None and not np.isclose(scale, self.router.guidance_scale):
                problems.append(f"guidance scale {scale} != {self.router.guidance_scale}")
            if problems:
                raise ValueError(
                    "HarmoniCa router does not match this sampling call: " + "; ".join(problems) + "."
                )
        elif timestep is not None:
            first = float(torch.as_tensor(timestep).reshape(-1)[0])
            if not np.isclose(first, expected[0], atol=1e-4):
                raise ValueError(f"HarmoniCa router expects the first timestep {expected[0]}, got {first}.")

    def describe(self) -> str:
        return f"harmonica({self.router.num_steps} steps, tau={self.threshold:g})"
