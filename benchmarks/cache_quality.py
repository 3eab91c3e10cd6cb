"""Cache quality on the embedded trained DiT (issue 5, benchmark b): compute fraction vs fidelity and FD.

Two stages, each one command (run ``train`` first; ``run`` reads the routers it wrote):

    # HarmoniCa routers (SDT + IEPO, fastsample.cache.train_router) for the benchmark's sampling setting
    OMP_WAIT_POLICY=PASSIVE nice -n 10 python benchmarks/cache_quality.py train --out /tmp/cq --threads 1
    # every cache row on the same 500 labels and initial noises, batches interleaved across rows
    OMP_WAIT_POLICY=PASSIVE nice -n 10 python benchmarks/cache_quality.py run --out /tmp/cq --threads 1

Setting: the shipped ``PixelDiTPipeline`` (``fastsample.zoo.default``) with its shipped scheduler
(DPM-Solver++ 2M), 20 steps, classifier-free guidance 4.0 (``fastsample bench``'s scale). Every row samples
the same balanced labels from the same noise. Per row:

* ``compute``: computed-MAC fraction ``f`` (``CacheStats.computed_mac_fraction`` for fastsample's caches; for
  diffusers' hooks the same MAC model applied to which sub-modules actually ran, counted by forward hooks);
  theoretical speed-up ``1 / f``;
* ``psnr``: PSNR (dB, images in [0, 1]) of each final sample against the uncached sample from the same noise,
  averaged over images;
* ``fd_real``: in-domain Fréchet distance to 2,000 real procedural images; ``fd_uncached``: FD to the uncached
  samples; ``class_accuracy`` (the shipped feature net, ``fastsample bench``'s helpers); a paired bootstrap
  (same resampled indices for both rows) of ``fd_real - fd_real(uncached)``;
* ``speedup``: median wall-clock of the uncached row's batch over the row's median batch (same run,
  batches interleaved across rows, one untimed warm-up batch per row).

Rows: uncached; FORA(N = 2, 3, 4); the dynamic first-block threshold; HarmoniCa at several sparsity weights β;
diffusers' own FirstBlockCache and Pyramid Attention Broadcast through ``diffusers.hooks.apply_*`` with a
manually set cache context and a reset before every call (DiT is not a ``CacheMixin`` model and its pipelines
open no cache context); diffusers caches that cannot run on DiT are recorded with their error.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import math
import platform
import shlex
import sys
from pathlib import Path

import torch

from fastsample.integration.measure import NFECounter, Stopwatch

logger = logging.getLogger("cache_quality")

STEPS = 20
GUIDANCE = 4.0
BETAS = (3e-8, 1e-7, 3e-7, 1e-6)


def _pipe():
    from fastsample.zoo.default import load_default_pipeline

    pipe = load_default_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -------------------------------------------------------------------------------- train
def train(args: argparse.Namespace) -> int:
    """One HarmoniCa router per β for (shipped DPM-Solver++ 2M, 20 steps, guidance 4.0)."""
    from fastsample.cache import RouterTrainingConfig, train_router

    pipe = _pipe()
    out = Path(args.out) / "routers"
    for beta in (float(b) for b in args.betas.split(",")):
        config = RouterTrainingConfig(
            num_inference_steps=args.steps,
            guidance_scale=args.guidance_scale,
            iterations=args.iterations,
            batch_size=args.batch_size,
            lr=args.lr,
            beta=beta,
            iepo_every=args.iepo_every,
            seed=args.seed,
            init_interval=args.init_interval,
        )
        watch = Stopwatch().start()
        artifact, history = train_router(pipe, config, progress=not args.quiet)
        seconds = watch.stop()
        artifact.training["wall_s"] = seconds
        path = artifact.save_pretrained(out / (f"beta-{beta:g}" + (f"-{args.tag}" if args.tag else "")))
        mask = artifact.mask()
        print(
            f"beta={beta:g}: {config.iterations} iterations in {seconds:.0f} s, loss {history[0]:.3g} -> "
            f"{history[-1]:.3g}, scheduled hit ratio {100 * (1 - mask.mean()):.1f}% -> {path}",
            flush=True,
        )
    return 0


# -------------------------------------------------------------------------------- rows
class Row:
    """One configuration: ``enter()`` before each pipeline call, ``exit()`` after it, ``stats()`` of the call.

    ``family`` groups the rows of one method into a curve; ``knob`` is the swept value (for the table).
    """

    def __init__(self, name: str, family: str, knob: str) -> None:
        self.name, self.family, self.knob = name, family, knob
        self.fractions: list[float] = []  # computed-MAC fraction of every timed call (fastsample's stats)

    def enter(self, pipe) -> None:
        pass

    def exit(self, pipe) -> None:
        pass


class Uncached(Row):
    def __init__(self) -> None:
        super().__init__("uncached", "uncached", "-")


class FastsampleRow(Row):
    """``fastsample.cache.enable_cache(pipe, method, **knobs)`` around each call (a fresh cache per call)."""

    def __init__(self, name: str, family: str, knob: str, method: str, profiles: dict, **knobs) -> None:
        super().__init__(name, family, knob)
        self.method, self.knobs, self.profiles = method, knobs, profiles
        self.handle = None

    def enter(self, pipe) -> None:
        from fastsample.cache import enable_cache

        self.handle = enable_cache(pipe, self.method, profile_macs=False, **self.knobs)

    def exit(self, pipe) -> None:
        stats = self.handle.stats()
        self.handle.disable()
        self.handle = None
        # MAC model of this level (profiled once on the uncached model at the benchmark's batch shape)
        total, sites = self.profiles[stats.level]
        stats.total_macs = dict.fromkeys(stats.computed, total)
        stats.site_macs = dict.fromkeys(stats.computed, sites)
        self.fractions.append(stats.computed_mac_fraction)


class DiffusersRow(Row):
    """A ``diffusers.hooks.apply_*`` cache: applied before each call, reset and given a cache context (DiT is
    not a ``CacheMixin`` model and the pipeline opens no context), removed after the call."""

    def __init__(self, name: str, family: str, knob: str, apply, hook_names: tuple[str, ...]) -> None:
        super().__init__(name, family, knob)
        self.apply, self.hook_names = apply, hook_names

    def enter(self, pipe) -> None:
        from diffusers.hooks import HookRegistry
        from diffusers.hooks.hooks import CacheContext, _set_cache_context

        model = pipe.transformer
        self.apply(model)
        registry = HookRegistry.check_if_exists_or_initialize(model)
        registry.invalidate_child_registries_cache()
        registry.reset_stateful_hooks(recurse=True)
        _set_cache_context(model, CacheContext("inference"))  # what CacheMixin.cache_context does

    def exit(self, pipe) -> None:
        from diffusers.hooks import HookRegistry
        from diffusers.hooks.hooks import _set_cache_context

        model = pipe.transformer
        _set_cache_context(model, None)
        registry = HookRegistry.check_if_exists_or_initialize(model)
        for name in self.hook_names:
            registry.remove_hook(name, recurse=True)
        registry.invalidate_child_registries_cache()


class ComputeCounter:
    """Counts, with forward hooks, which sub-modules really ran: ``norm1`` of a block (the block ran),
    ``attn1.to_q`` (the attention unit ran) and the first layer of ``ff`` (the MLP unit ran). With the MAC
    model (total per forward, per block, per unit) this gives every row's computed-MAC fraction the same way,
    diffusers' hooks included; for fastsample's rows it is an independent check of ``CacheStats``."""

    def __init__(self, model: torch.nn.Module, profiles: dict) -> None:
        self.total, unit_macs = profiles["unit"]
        _, self.block_macs = profiles["block"]
        self.attn_macs, self.ff_macs = unit_macs[0::2], unit_macs[1::2]
        blocks = model.transformer_blocks
        self.counts = {key: [0] * len(blocks) for key in ("block", "attn", "ff")}
        self.nfe = NFECounter(model)
        self.handles = [self.nfe]
        for i, block in enumerate(blocks):
            for key, module in (("block", block.norm1), ("attn", block.attn1.to_q), ("ff", block.ff.net[0])):
                self.handles.append(module.register_forward_pre_hook(self._counter(key, i)))

    def _counter(self, key: str, index: int):
        def hook(module, args) -> None:
            self.counts[key][index] += 1

        return hook

    def take(self) -> float:
        """Computed-MAC fraction since the last ``take``; resets the counts."""
        import numpy as np

        block, attn, ff = (np.asarray(self.counts[k], dtype=float) for k in ("block", "attn", "ff"))
        outside = self.total - self.block_macs.sum()  # patch embedding, final layer, timestep/label embedding
        rest = self.block_macs - self.attn_macs - self.ff_macs  # adaLN modulation of each block
        forwards = self.nfe.count
        spent = forwards * outside + (block * rest + attn * self.attn_macs + ff * self.ff_macs).sum()
        fraction = spent / (forwards * self.total) if forwards else math.nan
        self.nfe.reset()
        for key in self.counts:
            self.counts[key] = [0] * len(self.counts[key])
        return float(fraction)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def mac_profiles(pipe, call) -> dict:
    """``{"unit": (total, per-unit MACs), "block": (total, per-block MACs)}`` of one forward at the
    benchmark's batch shape (``FlopCounterMode`` through ``enable_cache``'s profiler, full-compute step 0)."""
    from fastsample.cache import enable_cache

    profiles = {}
    for method, level in (("none", "unit"), ("dynamic", "block")):
        handle = enable_cache(pipe, method, **({"threshold": 0.0} if method == "dynamic" else {}))
        try:
            call(num_inference_steps=1)
            stats = handle.stats()
        finally:
            handle.disable()
        profiles[level] = (stats.total_macs["default"], stats.site_macs["default"])
    return profiles


def diffusers_row(kind: str, name: str, family: str, knob: str, **config) -> DiffusersRow:
    """A :class:`DiffusersRow` of diffusers' cache ``kind`` ("fbc", "pab", "taylorseer" or "magcache") with
    ``config`` for its ``*Config`` class."""
    import diffusers.hooks as hooks
    from diffusers.hooks.first_block_cache import _FBC_BLOCK_HOOK, _FBC_LEADER_BLOCK_HOOK
    from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK, _MAG_CACHE_LEADER_BLOCK_HOOK
    from diffusers.hooks.pyramid_attention_broadcast import _PYRAMID_ATTENTION_BROADCAST_HOOK
    from diffusers.hooks.taylorseer_cache import _TAYLORSEER_CACHE_HOOK

    table = {
        "fbc": (
            hooks.apply_first_block_cache,
            hooks.FirstBlockCacheConfig,
            (_FBC_LEADER_BLOCK_HOOK, _FBC_BLOCK_HOOK),
        ),
        "pab": (
            hooks.apply_pyramid_attention_broadcast,
            hooks.PyramidAttentionBroadcastConfig,
            (_PYRAMID_ATTENTION_BROADCAST_HOOK,),
        ),
        "taylorseer": (hooks.apply_taylorseer_cache, hooks.TaylorSeerCacheConfig, (_TAYLORSEER_CACHE_HOOK,)),
        "magcache": (
            hooks.apply_mag_cache,
            hooks.MagCacheConfig,
            (_MAG_CACHE_LEADER_BLOCK_HOOK, _MAG_CACHE_BLOCK_HOOK),
        ),
    }
    apply, config_class, hook_names = table[kind]
    return DiffusersRow(name, family, knob, lambda model: apply(model, config_class(**config)), hook_names)


def pab_row(skip: int, window: tuple[int, int], current_timestep: list) -> DiffusersRow:
    """diffusers' Pyramid Attention Broadcast: ``attn1`` reused ``skip − 1`` of every ``skip`` steps while
    the timestep lies in ``window``; ``current_timestep[0]`` is the timestep of the denoiser call in progress
    (its required callback)."""
    return diffusers_row(
        "pab", f"diffusers-pab-{skip}-{window[0]}-{window[1]}", "diffusers PAB",
        f"attn1 every {skip}, t in {window}", spatial_attention_block_skip_range=skip,
        spatial_attention_timestep_skip_range=window, current_timestep_callback=lambda: current_timestep[0],
    )  # fmt: skip


def diffusers_rows(
    pipe, current_timestep: list, steps: int, guidance_scale: float
) -> tuple[list[Row], dict[str, str]]:
    """FirstBlockCache, PAB, TaylorSeer and MagCache rows; the diffusers caches that cannot run, with their
    error."""
    rows: list[Row] = []
    for threshold in (0.1, 0.2):
        rows.append(
            diffusers_row(
                "fbc", f"diffusers-fbc-{threshold:g}", "diffusers FirstBlockCache",
                f"threshold {threshold:g}", threshold=threshold,
            )
        )  # fmt: skip
    rows.append(pab_row(2, (100, 800), current_timestep))
    taylor = r"transformer_blocks\.\d+\.(attn1|ff)"  # the default patterns hook nothing on DiT (see below)
    for interval in (2, 3):
        rows.append(
            diffusers_row(
                "taylorseer", f"diffusers-taylorseer-{interval}", "diffusers TaylorSeer (attn1/ff)",
                f"interval {interval}, order 1", cache_interval=interval, disable_cache_before_step=1,
                max_order=1, taylor_factors_dtype=torch.float32, cache_identifiers=[taylor],
            )
        )  # fmt: skip
    ratios = calibrate_mag_cache(pipe, steps, guidance_scale)
    for threshold in (0.06, 0.12):
        rows.append(
            diffusers_row(
                "magcache", f"diffusers-magcache-{threshold:g}", "diffusers MagCache (calibrated)",
                f"threshold {threshold:g}", threshold=threshold, num_inference_steps=steps, mag_ratios=ratios,
            )
        )  # fmt: skip
    return rows, probe_other_diffusers_caches(pipe)


def calibrate_mag_cache(pipe, steps: int, guidance_scale: float) -> list[float]:
    """MagCache's own calibration (``calibrate=True`` prints the per-step magnitude ratios) on 20 samples
    whose noise is not the benchmark's; returns the printed ratios."""
    import ast
    import contextlib
    import io

    from diffusers.hooks import HookRegistry, MagCacheConfig, apply_mag_cache
    from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK, _MAG_CACHE_LEADER_BLOCK_HOOK

    model = pipe.transformer
    apply_mag_cache(model, MagCacheConfig(calibrate=True, num_inference_steps=steps))
    registry = HookRegistry.check_if_exists_or_initialize(model)
    registry.invalidate_child_registries_cache()
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            pipe(
                class_labels=list(range(pipe.num_classes)) * 2,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                generator=torch.Generator().manual_seed(12345),
                output_type="pt",
            )
    finally:
        for name in (_MAG_CACHE_LEADER_BLOCK_HOOK, _MAG_CACHE_BLOCK_HOOK):
            registry.remove_hook(name, recurse=True)
        registry.invalidate_child_registries_cache()
    lines = [line for line in printed.getvalue().splitlines() if line.startswith("[")]
    if not lines:
        raise RuntimeError(f"MagCache calibration printed no ratios: {printed.getvalue()!r}")
    ratios = [float(r) for r in ast.literal_eval(lines[-1])]
    logger.info("MagCache calibrated ratios: %s", [round(r, 4) for r in ratios])
    return ratios


def probe_other_diffusers_caches(pipe) -> dict[str, str]:
    """Try the remaining diffusers caches on a copy-free one-step call; record what happens."""
    import diffusers.hooks as H
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    model = pipe.transformer
    outcome: dict[str, str] = {}
    attempts = {
        "TaylorSeerCache (defaults)": lambda: H.apply_taylorseer_cache(model, H.TaylorSeerCacheConfig()),
        "MagCache (no mag_ratios)": lambda: H.apply_mag_cache(
            model, H.MagCacheConfig(num_inference_steps=STEPS)
        ),
        "FasterCache (defaults, BCHW)": lambda: H.apply_faster_cache(
            model, H.FasterCacheConfig(tensor_format="BCHW", current_timestep_callback=lambda: 500)
        ),
    }
    for name, attempt in attempts.items():
        before = {
            n
            for n, m in model.named_modules()
            if getattr(m, "_diffusers_hook", None) and m._diffusers_hook.hooks
        }
        try:
            attempt()
            registry = HookRegistry.check_if_exists_or_initialize(model)
            registry.invalidate_child_registries_cache()
            hooked = [
                n
                for n, m in model.named_modules()
                if getattr(m, "_diffusers_hook", None) and m._diffusers_hook.hooks
            ]
            _set_cache_context(model, CacheContext("inference"))
            try:
                pipe(class_labels=[0, 1], num_inference_steps=3, guidance_scale=GUIDANCE, output_type="pt")
                outcome[name] = f"ran; {len(set(hooked) - before)} modules hooked"
            finally:
                _set_cache_context(model, None)
        except Exception as error:  # recorded in the report, never hidden
            outcome[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
        finally:
            registry = HookRegistry.check_if_exists_or_initialize(model)
            for _, module in model.named_modules():
                reg = getattr(module, "_diffusers_hook", None)
                if reg is not None:
                    for hook_name in list(reg.hooks):
                        reg.remove_hook(hook_name, recurse=False)
            registry.invalidate_child_registries_cache()
    return outcome


# -------------------------------------------------------------------------------- run
def _psnr(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of ``[N, 3, H, W]`` images in [0, 1]: ``10 log10(1 / MSE)`` (inf when equal)."""
    mse = ((images.double() - reference.double()) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)


def _interpolate(points: list[tuple[float, float]], at: float) -> float | None:
    """Linear interpolation of (fraction, value) points at ``at``; ``None`` outside their range."""
    points = sorted(points)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= at <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (at - x0) / (x1 - x0)
    if points and math.isclose(points[0][0], at, abs_tol=1e-9):
        return points[0][1]
    return None


def _router_family(artifact) -> str:
    """Curve name of a router: "HarmoniCa (<iterations> it[, FORA(N) init])"."""
    training = artifact.training
    init = training.get("init_interval")
    return f"HarmoniCa ({training['iterations']} it" + (f", FORA({init}) init)" if init else ")")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm.auto import tqdm

    from fastsample.cache import RouterArtifact
    from fastsample.eval.bench import _balanced_labels, _statistics, _timed_call, _versions
    from fastsample.eval.extractors import InDomainExtractor
    from fastsample.eval.frechet import frechet_distance
    from fastsample.eval.stats import FeatureStatistics
    from fastsample.zoo.data import generate_batch
    from fastsample.zoo.default import classify, load_feature_net

    wall = Stopwatch().start()
    out = Path(args.out)
    pipe = _pipe()
    model = pipe.transformer
    device = torch.device("cpu")
    size, channels = model.config.sample_size, model.config.in_channels
    labels = _balanced_labels(args.samples, pipe.num_classes)
    noise = torch.randn(
        args.samples, channels, size, size, generator=torch.Generator().manual_seed(args.seed)
    )
    batches = list(zip(labels.split(args.batch_size), noise.split(args.batch_size)))

    def call(batch_labels=batches[0][0], batch_noise=batches[0][1], num_inference_steps=args.steps):
        return _timed_call(
            pipe,
            device,
            class_labels=batch_labels,
            guidance_scale=args.guidance_scale,
            num_inference_steps=num_inference_steps,
            latents=batch_noise,
            output_type="pt",
        )

    current_timestep = [0.0]  # for PAB's callback: the timestep of the denoiser call in progress
    timestep_hook = model.register_forward_pre_hook(
        lambda m, a, k: current_timestep.__setitem__(0, float(torch.as_tensor(k["timestep"]).reshape(-1)[0])),
        with_kwargs=True,
    )
    probe_x = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(99))
    probe_t, probe_y = torch.tensor([500.0, 500.0]), torch.tensor([1, 10])
    with torch.no_grad():
        probe_before = model(probe_x, timestep=probe_t, class_labels=probe_y).sample

    profiles = mac_profiles(pipe, call)
    logger.info("MACs per forward at batch %d (CFG x2): %.3g", args.batch_size, profiles["unit"][0])

    patterns = [p.strip() for p in args.rows.split(",") if p.strip()]

    def selected(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)

    want_diffusers = any(p.startswith("diffusers") or p == "*" for p in patterns)
    rows: list[Row] = [Uncached()]
    for n in (2, 3, 4):
        rows.append(FastsampleRow(f"fora-{n}", "FORA", f"N={n}", "fora", profiles, interval=n))
    for threshold in (float(t) for t in args.thresholds.split(",")):
        rows.append(
            FastsampleRow(
                f"dynamic-{threshold:g}",
                "dynamic threshold",
                f"threshold {threshold:g}",
                "dynamic",
                profiles,
                threshold=threshold,
            )
        )
    routers = [(RouterArtifact.from_pretrained(path), path) for path in (out / "routers").glob("beta-*")]
    if not routers and selected("harmonica-x"):
        raise FileNotFoundError(f"no routers in {out / 'routers'}: run the `train` stage first")
    for artifact, path in sorted(routers, key=lambda ap: (_router_family(ap[0]), ap[0].training["beta"])):
        rows.append(
            FastsampleRow(
                f"harmonica-{path.name}",
                _router_family(artifact),
                f"beta {artifact.training['beta']:g}",
                "harmonica",
                profiles,
                router=str(path),
            )
        )
    if want_diffusers:
        extra, unavailable = diffusers_rows(pipe, current_timestep, args.steps, args.guidance_scale)
        rows += extra
    else:
        unavailable = {}
    rows = [row for row in rows if row.name == "uncached" or selected(row.name)]
    logger.info("rows: %s", [row.name for row in rows])
    with torch.no_grad():
        probe_after = model(probe_x, timestep=probe_t, class_labels=probe_y).sample
    if not torch.equal(probe_before, probe_after):
        raise RuntimeError("probing diffusers' caches left the model changed")

    counter = ComputeCounter(model, profiles)
    images = {r.name: [] for r in rows}
    times = {r.name: [] for r in rows}
    counted = {r.name: [] for r in rows}

    def sample(row: Row, batch_labels, batch_noise):
        counter.take()
        row.enter(pipe)
        try:
            result, seconds = call(batch_labels, batch_noise)
        finally:
            row.exit(pipe)
        return result.float().cpu(), seconds, counter.take()

    with tqdm(total=len(rows) * (len(batches) + 1), desc="cache-quality", unit="batch") as bar:
        for row in rows:  # untimed warm-up (10 samples)
            sample(row, batches[0][0][:10], batches[0][1][:10])
            if isinstance(row, FastsampleRow):
                row.fractions.clear()
            bar.update()
        for index, (batch_labels, batch_noise) in enumerate(batches):
            for row in rows:
                bar.set_postfix_str(f"batch {index} {row.name}")
                result, seconds, fraction = sample(row, batch_labels, batch_noise)
                images[row.name].append(result)
                times[row.name].append(seconds)
                counted[row.name].append(fraction)
                bar.update()
    counter.remove()
    timestep_hook.remove()
    with torch.no_grad():
        if not torch.equal(probe_before, model(probe_x, timestep=probe_t, class_labels=probe_y).sample):
            raise RuntimeError("a cache row left the model changed after removal")

    feature_net = load_feature_net(device=device)
    extractor = InDomainExtractor(feature_net, device=device)
    real, _ = generate_batch(args.reference_samples, seed=args.seed + 1)
    reference = _statistics(extractor, (real + 1) / 2)
    real_check, _ = generate_batch(args.samples, seed=args.seed + 2)
    check = _statistics(extractor, (real_check + 1) / 2)
    fd_floor = frechet_distance(check.mu, check.sigma, reference.mu, reference.sigma)

    def stats_of(features: torch.Tensor):
        accumulator = FeatureStatistics(features.shape[1])
        accumulator.update(features)
        return accumulator.result()

    generated = {name: torch.cat(chunks) for name, chunks in images.items()}
    features = {
        name: torch.cat([extractor(c).cpu() for c in imgs.split(500)]) for name, imgs in generated.items()
    }
    base = generated["uncached"]
    base_stats = stats_of(features["uncached"])
    boot = np.random.default_rng(args.seed).integers(0, args.samples, size=(args.bootstrap, args.samples))

    def fd_real_of(feats: torch.Tensor) -> float:
        s = stats_of(feats)
        return frechet_distance(s.mu, s.sigma, reference.mu, reference.sigma)

    base_boot = [fd_real_of(features["uncached"][torch.from_numpy(i)]) for i in boot]
    base_time = statistics_median(times["uncached"])
    table = []
    for row in rows:
        feats = features[row.name]
        s = stats_of(feats)
        fd_real = frechet_distance(s.mu, s.sigma, reference.mu, reference.sigma)
        diffs = [fd_real_of(feats[torch.from_numpy(i)]) - b for i, b in zip(boot, base_boot)]
        psnr = _psnr(generated[row.name], base)
        finite = psnr[torch.isfinite(psnr)]
        fraction_counted = float(np.mean(counted[row.name]))
        fraction = float(np.mean(row.fractions)) if row.fractions else fraction_counted
        table.append(
            {
                "name": row.name,
                "family": row.family,
                "knob": row.knob,
                "compute": fraction,
                "compute_counted": fraction_counted,
                "theoretical": 1.0 / fraction,
                "speedup": base_time / statistics_median(times[row.name]),
                "psnr": float(finite.mean()) if len(finite) else math.inf,
                "identical_images": int((~torch.isfinite(psnr)).sum()),
                "fd_real": fd_real,
                "fd_real_delta_ci": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))],
                "fd_uncached": 0.0
                if row.name == "uncached"
                else frechet_distance(s.mu, s.sigma, base_stats.mu, base_stats.sigma),
                "class_accuracy": float(
                    (classify(generated[row.name], feature_net) == labels).double().mean()
                ),
                "batch_s": statistics_median(times[row.name]),
            }
        )
    results = {
        "command": "python benchmarks/cache_quality.py " + shlex.join(sys.argv[1:]),
        "setting": f"shipped PixelDiT + shipped {type(pipe.scheduler).__name__}, {args.steps} steps, "
        f"guidance {args.guidance_scale}, {args.samples} samples (balanced labels, seed {args.seed}), "
        f"batches of {args.batch_size} interleaved across rows, {len(batches)} timed batches per row",
        "machine": f"{platform.platform()}, {torch.get_num_threads()} torch threads",
        "versions": _versions(),
        "fd_floor_real_vs_real": fd_floor,
        "macs_per_forward": profiles["unit"][0],
        "diffusers_not_run": unavailable,
        "rows": table,
        "batch_times_s": times,
    }
    results["matched"] = matched(table)
    results["wall_s"] = wall.elapsed()
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "report.md").write_text(markdown(results))
    plot(table, results, Path(args.plot))
    print(markdown(results))
    return 0


def statistics_median(values: list[float]) -> float:
    import statistics

    return statistics.median(values)


def matched(table: list[dict]) -> dict:
    """Each method's curve interpolated (linearly in compute fraction) at common fractions."""
    grid = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    families: dict[str, list[dict]] = {}
    for row in table:
        if row["family"] != "uncached":
            families.setdefault(row["family"], []).append(row)
    out = {}
    for family, rows in families.items():
        entry = {}
        for at in grid:
            values = {
                key: _interpolate([(r["compute"], r[key]) for r in rows], at)
                for key in ("psnr", "fd_real", "fd_uncached", "class_accuracy")
            }
            if values["psnr"] is not None:
                entry[f"{at:g}"] = values
        out[family] = entry
    return out


def _fmt(value, digits=3) -> str:
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.{digits}g}"
    return str(value)


def markdown(results: dict) -> str:
    table = results["rows"]
    base = next(r for r in table if r["name"] == "uncached")
    lines = [
        f"- command: `{results['command']}`",
        f"- setting: {results['setting']}",
        f"- machine: {results['machine']}; versions: {results['versions']}",
        f"- FD floor (real vs real, same count): {results['fd_floor_real_vs_real']:.3f}; "
        f"MACs per forward {results['macs_per_forward']:.3g}; wall {results['wall_s']:.0f} s",
        "",
        "| row | method | knob | computed MACs | theoretical | measured speed-up | PSNR dB | FD real | "
        "ΔFD vs uncached [95% CI] | FD to uncached | class acc. |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        ci = r["fd_real_delta_ci"]
        lines.append(
            f"| {r['name']} | {r['family']} | {r['knob']} | {100 * r['compute']:.1f}% "
            f"(hooks: {100 * r['compute_counted']:.1f}%) | {r['theoretical']:.2f}x | {r['speedup']:.2f}x | "
            f"{_fmt(r['psnr'])} | {r['fd_real']:.3f} | {r['fd_real'] - base['fd_real']:+.3f} "
            f"[{ci[0]:+.3f}, {ci[1]:+.3f}] | {r['fd_uncached']:.3f} | {r['class_accuracy']:.3f} |"
        )
    lines += [
        "",
        "Matched compute fraction (linear interpolation along each method's curve; blank = outside "
        "the curve's range):",
        "",
    ]
    fams = list(results["matched"])
    grid = sorted({k for f in fams for k in results["matched"][f]}, key=float)
    for metric in ("psnr", "fd_real", "class_accuracy"):
        lines.append(f"| {metric} at compute | " + " | ".join(grid) + " |")
        lines.append("|---|" + "---|" * len(grid))
        for f in fams:
            cells = [results["matched"][f].get(k, {}).get(metric) for k in grid]
            lines.append(f"| {f} | " + " | ".join("" if c is None else _fmt(c) for c in cells) + " |")
        lines.append("")
    target = [
        r["name"]
        for r in table
        if r["name"] != "uncached" and r["speedup"] >= 1.5 and r["fd_real"] <= 1.05 * base["fd_real"]
    ]
    lines.append(f"Rows with measured speed-up >= 1.5x and FD within 5 % of uncached: {target or 'none'}")
    lines.append("")
    lines.append("diffusers caches not in the table:")
    lines += [f"- {k}: {v}" for k, v in results["diffusers_not_run"].items()]
    return "\n".join(lines) + "\n"


def plot(table: list[dict], results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = next(r for r in table if r["name"] == "uncached")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    families: dict[str, list[dict]] = {}
    for r in table:
        if r["family"] != "uncached":
            families.setdefault(r["family"], []).append(r)
    for family, rows in families.items():
        rows = sorted(rows, key=lambda r: r["compute"])
        x = [r["compute"] for r in rows]
        axes[0].plot(x, [r["psnr"] for r in rows], "o-", label=family)
        axes[1].plot(x, [r["fd_real"] for r in rows], "o-", label=family)
    axes[1].axhline(base["fd_real"], color="k", lw=1, label="uncached")
    axes[1].axhspan(0, 1.05 * base["fd_real"], color="k", alpha=0.07, label="within 5 % of uncached")
    axes[0].set_ylabel("PSNR vs uncached sample (dB)")
    axes[1].set_ylabel("in-domain FD to real data")
    axes[1].set_ylim(0, max(r["fd_real"] for r in table) * 1.1)
    for ax in axes:
        ax.set_xlabel("computed-MAC fraction")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(
        "Feature caching on the embedded DiT (" + results["setting"].split(",")[0] + f", {STEPS} steps)",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="stage", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", default="cache-quality")
    common.add_argument("--threads", type=int, default=None)
    common.add_argument("--steps", type=int, default=STEPS)
    common.add_argument("--guidance-scale", type=float, default=GUIDANCE)
    common.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("train", parents=[common], help="train the HarmoniCa routers")
    t.add_argument("--betas", default=",".join(f"{b:g}" for b in BETAS))
    t.add_argument("--iterations", type=int, default=570)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, default=0.15)
    t.add_argument("--iepo-every", type=int, default=190)
    t.add_argument(
        "--init-interval",
        type=int,
        default=None,
        help="start the router from FORA(N)'s schedule instead of N(0, 1) logits (the paper's)",
    )
    t.add_argument("--tag", default="", help="suffix of the router directories (beta-<β>-<tag>)")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=train)
    r = sub.add_parser("run", parents=[common], help="sample every row and write the report")
    r.add_argument("--samples", type=int, default=500)
    r.add_argument("--batch-size", type=int, default=100)
    r.add_argument("--reference-samples", type=int, default=2000)
    r.add_argument("--thresholds", default="0.05,0.1,0.2", help="dynamic-threshold values")
    r.add_argument("--bootstrap", type=int, default=200)
    r.add_argument(
        "--rows",
        default="*",
        help="comma-separated fnmatch patterns of the row names to run (default *: all), e.g. "
        "'fora-*,dynamic-*,harmonica-*'; uncached always runs; diffusers' rows (and MagCache's "
        "calibration) only with a pattern starting with 'diffusers' or '*'",
    )
    r.add_argument("--plot", default="benchmarks/results/img/cache_quality.png")
    r.set_defaults(func=run)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("fastsample").setLevel(logging.WARNING)  # one "cache enabled" line per call otherwise
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
