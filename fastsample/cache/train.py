"""HarmoniCa router training: Step-Wise Denoising Training + Image-Error-Proxy-guided objective.

Huang et al., "HarmoniCa: Harmonizing Training and Inference for Better Feature Caching in Diffusion
Transformer Acceleration" (ICML 2025, arXiv 2410.01723). Image-free: only noise and random class labels.

One *episode* is one sampling trajectory of the cached model itself (SDT):

1. step 0: full compute, no grad; fills the cache; ``x_1 = step(x_0, ε_0)``;
2. for k = 1..T-1 (one optimiser iteration each), with ``r_k = sigmoid(θ_k)``:
   teacher ``ε*_k`` = full compute on the current state ``x_k`` with the cache frozen (no grad);
   student ``ε̂_k`` = soft forward, every unit ``U = r·U_fresh + (1 - r)·C`` and ``C ← U_fresh`` if ``r > τ``;
   ``L_k = λ_k · mean((ε̂_k - ε*_k)²) + β · Σ_u r_k,u``; AdamW on θ only; clamp θ to [-5, 5];
   ``x_{k+1} = step(x_k, ε̂_k)`` (the student's own trajectory).

IEPO: every ``iepo_every`` iterations (at the first episode start at or after each multiple), on a fixed
noise batch and without grad, ``x0^(0)`` is sampled with
full compute and ``x0^(k)`` with the soft routers of steps 1..k switched on;
``λ_k = mean((x0^(k) - x0^(k-1))²)``, the marginal final-sample error caused by caching at step k.

Guidance follows the pipeline's CFG layout (``cond_first`` for DiT-style class-conditional pipelines, whose
denoiser takes ``class_labels`` with the null class ``config.num_embeds_ada_norm``); ε channels only when the
model also predicts a variance. Multi-process: run under ``accelerate launch``; each process draws its own
noise and gradients of θ are averaged by DDP.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fastsample.cache.api import attach_controller, check_no_cache
from fastsample.cache.policies import FORA
from fastsample.cache.router import Router, RouterArtifact, inference_mask, model_config_hash
from fastsample.cache.router_training import RouterTrainingController
from fastsample.cache.units import find_sites, find_units
from fastsample.integration.adapters import get_adapter, resolve_denoiser

logger = logging.getLogger(__name__)


@dataclass
class RouterTrainingConfig:
    """Knobs of :func:`train_router`; defaults are the paper's DiT-XL/2 256² recipe (T=10 DDIM)."""

    num_inference_steps: int = 10
    guidance_scale: float = 1.5
    iterations: int = 20000
    batch_size: int = 16  # per process; CFG doubles the denoiser batch
    lr: float = 0.01
    beta: float = 7e-8
    threshold: float = 0.1
    iepo_every: int = 500
    seed: int = 0
    init_interval: int | None = None  # None: θ ~ N(0, 1) (paper); N: start from FORA(N)'s schedule

    def validate(self) -> None:
        ints = {"num_inference_steps": 2, "iterations": 1, "batch_size": 1, "iepo_every": 1}
        for name, low in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}.")
        if not self.beta >= 0:
            raise ValueError(f"beta must be >= 0, got {self.beta!r}.")
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold τ must be in (0, 1), got {self.threshold!r}.")
        if self.init_interval is not None and (
            isinstance(self.init_interval, bool)
            or not isinstance(self.init_interval, int)
            or self.init_interval < 1
        ):
            raise ValueError(f"init_interval must be None or an integer >= 1, got {self.init_interval!r}.")
        if not self.guidance_scale >= 1:
            raise ValueError(f"guidance_scale must be >= 1, got {self.guidance_scale!r}.")


class _Sampler:
    """The pipeline's sampling loop, driven step by step, with the cache controller's modes."""

    def __init__(self, pipe: Any, config: RouterTrainingConfig, device: torch.device) -> None:
        adapter = get_adapter(pipe)
        model = resolve_denoiser(pipe, "train_router", require_adapter=True)
        if adapter.cfg_layout != "cond_first" or getattr(model.config, "num_embeds_ada_norm", None) is None:
            raise ValueError(
                f"router training supports class-conditional DiT pipelines (DiTPipeline, PixelDiTPipeline); "
                f"{type(pipe).__name__} is not one."
            )
        if adapter.prediction_type(pipe) != "epsilon":
            raise ValueError("router training supports ε-prediction schedulers only.")
        self.pipe, self.adapter, self.model, self.config, self.device = pipe, adapter, model, config, device
        self.null_class = int(model.config.num_embeds_ada_norm)
        self.channels = adapter.guided_channels(pipe) or int(model.config.in_channels)
        self.size = int(model.config.sample_size)
        self.dtype = next(model.parameters()).dtype
        # the training controller computes every unit; the loop below sets its mode before each forward
        check_no_cache(model)
        policy = FORA(interval=1)
        sites = find_sites(model, policy.level)
        policy.bind(model, sites)
        self.controller = RouterTrainingController(model, sites, policy)
        self.handle = attach_controller(self.controller)
        self.timesteps = self.new_scheduler().timesteps

    def new_scheduler(self) -> Any:
        scheduler = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        scheduler.set_timesteps(self.config.num_inference_steps)
        return scheduler

    def noise(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.config.batch_size
        x = torch.randn(b, self.channels, self.size, self.size, generator=generator)
        labels = torch.randint(0, self.null_class, (b,), generator=generator)
        return x.to(self.device, self.dtype), labels.to(self.device)

    def eps(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor,
        scheduler: Any,
        mode: str,
        scores: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """CFG-combined ε at state ``x``, ε_u + w (ε_c − ε_u), from one batched forward in the pipeline's CFG
        layout (the adapter's); ``mode`` is "teacher" or "soft" (``scores`` = router scores)."""
        self.controller.set_mode(mode, scores, self.config.threshold if mode == "soft" else None)
        model_in = scheduler.scale_model_input(self.adapter.cfg_stack(x, x), t)
        null = torch.full_like(labels, self.null_class)
        out = self.model(
            model_in,
            timestep=t.reshape(1).to(self.device).expand(2 * len(x)),
            class_labels=self.adapter.cfg_stack(labels, null),
        ).sample
        eps_cond, eps_uncond = self.adapter.cfg_halves(out[:, : self.channels])
        return eps_uncond + self.config.guidance_scale * (eps_cond - eps_uncond)

    def start(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """Reset the cache and run step 0 with full compute (fills the cache); returns (scheduler, x_1)."""
        self.controller.reset()
        scheduler = self.new_scheduler()
        x = x * scheduler.init_noise_sigma
        t = scheduler.timesteps[0]
        with torch.no_grad():
            eps = self.eps(
                x, t, labels, scheduler, "soft", torch.ones(len(self.controller.sites), device=x.device)
            )
        return scheduler, scheduler.step(eps, t, x).prev_sample

    def close(self) -> None:
        self.handle.disable()


def _iepo_weights(
    sampler: _Sampler, router: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """λ_k = mean((x0^(k) - x0^(k-1))²), soft routers of steps 1..k on (IEPO)."""
    steps = sampler.config.num_inference_steps
    ones = torch.ones(len(sampler.controller.sites), device=x.device)
    finals = []
    with torch.no_grad():
        for upto in range(steps):
            scheduler, state = sampler.start(x, labels)
            for k in range(1, steps):
                t = scheduler.timesteps[k]
                scores = router(k) if k <= upto else ones
                state = scheduler.step(
                    sampler.eps(state, t, labels, scheduler, "soft", scores), t, state
                ).prev_sample
            finals.append(state)
    lambdas = torch.zeros(steps)
    for k in range(1, steps):
        lambdas[k] = ((finals[k] - finals[k - 1]) ** 2).mean().float().cpu()
    return lambdas


def _episode(
    sampler: _Sampler,
    router: torch.nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    lambdas: torch.Tensor,
    optimizer: Any = None,
    accelerator: Any = None,
    on_step: Any = None,
    limit: int | None = None,
) -> list[float]:
    """One SDT trajectory (at most ``limit`` iterations); updates θ after every step when ``optimizer`` is
    given. Returns L_k for k = 1, 2, ..."""
    cfg = sampler.config
    scheduler, state = sampler.start(x, labels)
    losses = []
    last = cfg.num_inference_steps if limit is None else min(cfg.num_inference_steps, 1 + limit)
    for k in range(1, last):
        t = scheduler.timesteps[k]
        with torch.no_grad():
            target = sampler.eps(state, t, labels, scheduler, "teacher")
        with torch.set_grad_enabled(optimizer is not None):
            scores = router(k)
            prediction = sampler.eps(state, t, labels, scheduler, "soft", scores)
            loss = (
                lambdas[k].to(prediction.device) * torch.mean((prediction - target) ** 2)
                + cfg.beta * scores.sum()
            )
        if optimizer is not None:
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            accelerator.unwrap_model(router).clamp_()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(losses[-1])
        state = scheduler.step(prediction.detach(), t, state).prev_sample
    return losses


def _artifact(sampler: _Sampler, router: Router, config: RouterTrainingConfig, extra: dict) -> RouterArtifact:
    model = sampler.model
    return RouterArtifact(
        logits=router.logits.detach(),
        model_class=type(model).__name__,
        model_config_hash=model_config_hash(model),
        unit_names=[s.name for s in find_units(model)],
        scheduler_class=type(sampler.pipe.scheduler).__name__,
        timesteps=[float(t) for t in sampler.timesteps.tolist()],
        guidance_scale=float(config.guidance_scale),
        threshold=float(config.threshold),
        training={**asdict(config), **extra},
    )


def train_router(
    pipe: Any,
    config: RouterTrainingConfig | None = None,
    *,
    accelerator: Any = None,
    progress: bool = True,
) -> tuple[RouterArtifact, list[float]]:
    """Train a HarmoniCa router for ``pipe`` (its denoiser is frozen and left unchanged).

    Returns the artifact (for ``enable_cache(pipe, "harmonica", router=artifact)``) and the loss of every
    iteration. Run the calling script under ``accelerate launch`` to use several processes/GPUs.
    """
    config = config or RouterTrainingConfig()
    config.validate()
    if accelerator is None:
        from accelerate import Accelerator

        accelerator = Accelerator()
    device = accelerator.device
    model = resolve_denoiser(pipe, "train_router", require_adapter=True)
    was_training = model.training
    requires_grad = [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)
    sampler = _Sampler(pipe, config, device)
    try:
        gen = torch.Generator().manual_seed(config.seed)
        steps, units = config.num_inference_steps, len(sampler.controller.sites)
        init_mask = None
        if config.init_interval is not None:
            fora = FORA(interval=config.init_interval)
            init_mask = np.array([fora.plan(k, units) for k in range(steps)], dtype=bool)
        router = Router(steps, units, generator=gen, init_mask=init_mask).to(device)
        optimizer = torch.optim.AdamW(router.parameters(), lr=config.lr, weight_decay=0.0)
        router, optimizer = accelerator.prepare(router, optimizer)
        fixed = sampler.noise(torch.Generator().manual_seed(config.seed + 1))  # same on every process
        episode_gen = torch.Generator().manual_seed(config.seed + 2 + 1000 * accelerator.process_index)
        history: list[float] = []
        lambdas = None
        refreshes: list[int] = []  # iteration of every IEPO refresh, and the scheduled hit ratio then
        hit_ratios: list[float] = []
        next_refresh = 0  # IEPO at the first episode start at or after each multiple of iepo_every
        bar = tqdm(
            total=config.iterations,
            disable=not progress or not accelerator.is_local_main_process,
            desc="train-router",
        )

        def on_step(loss: float) -> None:
            history.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3g}")

        while len(history) < config.iterations:
            if len(history) >= next_refresh:
                lambdas = _iepo_weights(sampler, router, *fixed)
                refreshes.append(len(history))
                logits = accelerator.unwrap_model(router).logits
                hit_ratios.append(float(1.0 - inference_mask(logits, config.threshold).mean()))
                next_refresh = (len(history) // config.iepo_every + 1) * config.iepo_every
            x, labels = sampler.noise(episode_gen)
            _episode(
                sampler,
                router,
                x,
                labels,
                lambdas,
                optimizer,
                accelerator,
                on_step,
                limit=config.iterations - len(history),
            )
        bar.close()
        unwrapped = accelerator.unwrap_model(router)
        artifact = _artifact(
            sampler,
            unwrapped,
            config,
            {
                "num_processes": accelerator.num_processes,
                "final_lambdas": lambdas.tolist(),
                "iepo_refreshed_at": refreshes,
                "hit_ratio_at_refresh": hit_ratios,
            },
        )
    finally:
        sampler.close()
        model.train(was_training)
        for p, flag in zip(model.parameters(), requires_grad):
            p.requires_grad_(flag)
    return artifact, history


def evaluate_router_loss(pipe: Any, router: Router, config: RouterTrainingConfig, seed: int = 1234) -> float:
    """Σ_k L_k of one SDT episode on a fixed noise batch, with λ from IEPO on that batch (no update)."""
    from accelerate import Accelerator

    config.validate()
    model = resolve_denoiser(pipe, "evaluate_router_loss", require_adapter=True)
    requires_grad = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    sampler = _Sampler(pipe, config, Accelerator().device)
    try:
        x, labels = sampler.noise(torch.Generator().manual_seed(seed))
        with torch.no_grad():
            lambdas = _iepo_weights(sampler, router, x, labels)
            return float(sum(_episode(sampler, router, x, labels, lambdas)))
    finally:
        sampler.close()
        for p, flag in zip(model.parameters(), requires_grad):
            p.requires_grad_(flag)
