"""``fastsample.eval.frontier``: recipe validation, the frontier selection and its interval rule on synthetic
numbers, the unit counter, the machine-load warning and the FD floor's class make-up."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastsample.eval import frontier as fr
from fastsample.eval.bootstrap import FrechetInterval, Interval


def _interval(value: float, width: float = 0.5) -> Interval:
    return Interval(value, value - width, value + width, 0.95, 100, 50)


def _result(name, family, seconds, psnr=None, fd=None, scheduler=None) -> fr.RecipeResult:
    scheduler = scheduler or ("dpm++2m" if family != "fastsample" else "ghvb")
    cache = "cache-dit-dbcache" if family == "cache-dit" else None
    recipe = fr.Recipe(name, family, scheduler, 10, cache=cache)
    fd_interval = None if fd is None else FrechetInterval(Interval(fd[0], fd[1], fd[2], 0.95, 100, 50), None)
    return fr.RecipeResult(
        recipe,
        list(seconds),
        nfe=20.0,
        unit_fraction=1.0,
        psnr=None if psnr is None else _interval(psnr),
        fd=fd_interval,
    )


# ------------------------------------------------------------------------------------------ recipes
def test_recipe_validation_names_the_argument():
    with pytest.raises(ValueError, match="family must be one of"):
        fr.Recipe("a", "other", "dpm++2m", 10)
    with pytest.raises(ValueError, match="scheduler must be one of"):
        fr.Recipe("a", "diffusers", "nope", 10)
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        fr.Recipe("a", "diffusers", "dpm++2m", 0)
    with pytest.raises(ValueError, match="cache must be one of"):
        fr.Recipe("a", "diffusers", "dpm++2m", 10, cache="teacache")
    with pytest.raises(ValueError, match="cache_options must be a tuple"):
        fr.Recipe("a", "diffusers", "dpm++2m", 10, cache="diffusers-fbc", cache_options={"threshold": 0.1})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scheduler": "ghvb"},
        {"guidance": "ag"},
        {"cache": "fora"},
        {"kernels": True},
    ],
)
def test_diffusers_family_refuses_fastsample_components(kwargs):
    base = {"name": "a", "family": "diffusers", "scheduler": "dpm++2m", "steps": 10} | kwargs
    with pytest.raises(ValueError, match="use family 'fastsample'"):
        fr.Recipe(**base)
    fr.Recipe(**(base | {"family": "fastsample"}))  # the same recipe is a fastsample one


def test_cache_dit_family_needs_its_cache():
    with pytest.raises(ValueError, match="family 'cache-dit' needs a cache"):
        fr.Recipe("a", "cache-dit", "dpm++2m", 10)
    with pytest.raises(ValueError, match="makes the family 'cache-dit'"):
        fr.Recipe("a", "diffusers", "dpm++2m", 10, cache="cache-dit-dbcache")


def test_reference_recipe():
    assert fr.reference_recipe("vp").scheduler == "dpm++2m" and fr.reference_recipe("vp").steps == 100
    assert fr.reference_recipe("flow", 50).scheduler == "flow-euler"
    with pytest.raises(ValueError, match="model_family must be"):
        fr.reference_recipe("ve")


# ------------------------------------------------------------------------------------------ intervals
def test_ratio_summary_pairs_rounds():
    median, low, high = fr.ratio_summary([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert (median, low, high) == (2.0, 2.0, 2.0)  # every round is 2x even though the times drift 3x
    median, low, high = fr.ratio_summary([1.0, 2.0, 3.0, 4.0, 5.0], [1.0] * 5)
    assert median == 3.0 and low == pytest.approx(1.4) and high == pytest.approx(4.6)
    with pytest.raises(ValueError, match="must pair up"):
        fr.ratio_summary([1.0, 2.0], [1.0])


def test_separated_needs_the_whole_band_on_one_side():
    assert fr.separated(1.1, 1.5) and fr.separated(0.5, 0.9)
    assert not fr.separated(0.9, 1.5) and not fr.separated(1.0, 1.2)


# ------------------------------------------------------------------------------------------ frontier
def _synthetic():
    reference = _result("reference", "diffusers", [9.0] * 5, fd=(2.0, 1.8, 2.4))
    return [
        reference,
        # diffusers: the fast one reaches 25 dB only; the 30 dB one is slower
        _result("d-fast", "diffusers", [2.0, 2.1, 1.9, 2.0, 2.2], psnr=26.0, fd=(2.3, 2.0, 2.6)),
        _result("d-slow", "diffusers", [4.0, 4.2, 3.8, 4.0, 4.4], psnr=31.0, fd=(2.1, 1.9, 2.3)),
        _result("d-bad", "diffusers", [1.0] * 5, psnr=20.0, fd=(5.0, 4.0, 6.0)),
        # fastsample: 30 dB at 2x the diffusers speed in every round; a 25 dB one as fast as diffusers' one
        _result("f-30", "fastsample", [2.0, 2.1, 1.9, 2.0, 2.2], psnr=30.5, fd=(2.5, 2.2, 2.8)),
        _result("f-25", "fastsample", [2.1, 1.9, 2.1, 1.9, 2.1], psnr=25.5, fd=(2.45, 2.2, 2.7)),
        _result("c-28", "cache-dit", [3.0] * 5, psnr=28.0, fd=(2.2, 2.0, 2.4)),
    ]


def test_frontier_picks_the_fastest_of_each_family_per_level():
    entries = {e.level: e for e in fr.frontier(_synthetic())}
    at30 = entries["paired PSNR ≥ 30 dB"]
    assert at30.fastest["diffusers"].name == "d-slow" and at30.fastest["fastsample"].name == "f-30"
    assert at30.fastest["cache-dit"] is None
    assert at30.speedup["diffusers"] == (2.0, 2.0, 2.0)
    assert at30.verdict("diffusers") == "fastsample faster"
    assert at30.verdict("cache-dit") == "no cache-dit recipe reaches this level"
    at25 = entries["paired PSNR ≥ 25 dB"]
    assert at25.fastest["diffusers"].name == "d-fast" and at25.fastest["cache-dit"].name == "c-28"
    assert at25.fastest["fastsample"].name == "f-30"  # f-30 (median 2.0) is faster than f-25 (2.1)
    # per-round ratios 1.0 in every round: not separated, however the medians compare
    assert at25.speedup["diffusers"] == (1.0, 1.0, 1.0)
    assert at25.verdict("diffusers") == "not separated"
    median, low, high = at25.speedup["cache-dit"]
    assert low > 1 and at25.verdict("cache-dit") == "fastsample faster"


def test_fd_level_uses_the_reference_interval_and_never_the_reference():
    entries = {e.level: e for e in fr.frontier(_synthetic())}
    fd = entries["FD within the reference's interval"]
    # reference FD interval high = 2.4: d-fast (2.3) and d-slow (2.1) qualify, f-30 (2.5) and f-25 (2.45) not
    assert fd.fastest["diffusers"].name == "d-fast"
    assert fd.fastest["fastsample"] is None
    assert fd.verdict("diffusers") == "no fastsample recipe reaches this level"
    assert all(
        entry.fastest["diffusers"].name != "reference"
        for entry in entries.values()
        if entry.fastest["diffusers"]
    )


def test_slower_fastsample_is_named_and_overlap_is_not():
    results = [
        _result("reference", "diffusers", [9.0] * 4, fd=(2.0, 1.8, 2.4)),
        _result("d", "diffusers", [1.0, 1.0, 1.0, 1.0], psnr=31.0),
        _result("f", "fastsample", [2.0, 2.0, 2.0, 2.0], psnr=31.0),
    ]
    entry = fr.frontier(results)[0]
    assert entry.speedup["diffusers"] == (0.5, 0.5, 0.5)
    assert entry.verdict("diffusers") == "diffusers faster"
    noisy = [
        results[0],
        _result("d", "diffusers", [1.0, 1.4, 0.8, 1.2], psnr=31.0),
        _result("f", "fastsample", [1.0, 1.0, 1.0, 1.0], psnr=31.0),
    ]
    entry = fr.frontier(noisy)[0]
    assert entry.speedup["diffusers"][1] < 1 < entry.speedup["diffusers"][2]
    assert entry.verdict("diffusers") == "not separated"
    assert "not separated" in fr.headline([entry]) and "speed-up 1.10x (p10–p90" in fr.headline([entry])


def test_markdown_and_plot(tmp_path):
    results = _synthetic()
    entries = fr.frontier(results)
    table = fr.frontier_markdown(entries)
    assert table.count("\n") == 2 + len(entries) - 1 and "2.00x [2.00, 2.00] (fastsample faster)" in table
    listing = fr.results_markdown(results)
    assert listing.splitlines()[2].startswith("| `reference` |") and "| 3.00x [3.00, 3.00] |" in listing
    fr.plot_pareto(results, tmp_path / "p.png", title="t", batch_size=8)
    assert (tmp_path / "p.png").stat().st_size > 0


# ------------------------------------------------------------------------------------------ load
def test_machine_load_warns_when_busy():
    load = fr.MachineLoad(cores=2, threads=1, load_before=(0.5, 0.5, 0.5), load_after=(0.7, 0.6, 0.5))
    load.cpu_share = 0.95
    assert not load.busy
    load.load_after = (3.1, 2.0, 1.0)
    assert load.busy
    load.load_after, load.cpu_share = (0.7, 0.6, 0.5), 0.5
    assert load.busy and "CPU share of this process 0.50" in load.describe()
    measured = fr.MachineLoad(cores=2, threads=1).start()
    sum(i * i for i in range(10000))
    measured.stop()
    assert measured.cpu_share is not None and measured.cpu_share >= 0


# ------------------------------------------------------------------------------------------ counting
def test_unit_counter_counts_what_ran():
    from fastsample.cache import enable_cache
    from fastsample.testing import tiny_pixel_dit_transformer

    model = tiny_pixel_dit_transformer(sample_size=16, patch_size=4)
    x = torch.randn(3, 3, 16, 16)
    t = torch.full((3,), 500)
    labels = torch.tensor([0, 1, 2])
    counter = fr.UnitCounter(model)
    model(x, timestep=t, class_labels=labels)
    assert counter.calls == 1 and counter.samples == 3 and counter.unit_samples == 3
    counter.remove()
    handle = enable_cache(model, "fora", interval=2)
    counter = fr.UnitCounter(model)
    for _ in range(4):
        model(x, timestep=t, class_labels=labels)
    handle.disable()
    counter.remove()
    assert counter.samples == 12 and counter.unit_samples == 6  # FORA(2): steps 0 and 2 compute
    bare = fr.UnitCounter(torch.nn.Linear(2, 2))
    assert bare.unit_samples is None
    bare.remove()


def test_unit_counter_sees_a_guidance_windows_sliced_batch():
    """A window drops the unconditional half inside the denoiser's forward: counted at the input layer."""
    from fastsample.guidance import GuidanceWindow, guide
    from fastsample.testing import call_kwargs, tiny_pipeline

    pipe = tiny_pipeline("dit")
    counts = {}
    for name, method in (("cfg", None), ("window", GuidanceWindow(0.0, 0.5))):
        counter = fr.UnitCounter(pipe.transformer)
        if method is None:
            pipe(**call_kwargs("dit", num_inference_steps=4))
        else:
            with guide(pipe, method):
                pipe(**call_kwargs("dit", num_inference_steps=4))
        counter.remove()
        counts[name] = (counter.calls, counter.samples, counter.unit_samples)
    assert counts["cfg"] == (4, 8, 8)  # 4 steps x (cond + uncond) of one label
    assert counts["window"][0] == 4 and counts["window"][1] < 8 and counts["window"][2] == counts["window"][1]


def test_saturation_matches_colorsys():
    import colorsys

    images = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    pixels = images.permute(0, 2, 3, 1).reshape(-1, 3).double().numpy()
    expected = np.mean([colorsys.rgb_to_hsv(*p)[1] for p in pixels])
    assert fr.mean_saturation(images) == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------------------------------ the floor
def test_floor_with_the_generated_labels_is_far_below_a_random_label_floor():
    """The bench's old floor (real images with random labels) is ~10x the floor of real images with the
    generated set's balanced labels, which :func:`score` now uses."""
    from fastsample.eval.bootstrap import frechet_distance_interval
    from fastsample.zoo.data import generate_batch
    from fastsample.zoo.default import load_feature_net

    net = load_feature_net()
    labels = torch.arange(100) % 10
    with torch.no_grad():
        reference = net.features(generate_batch(1000, seed=1)[0])
        same = net.features(generate_batch(100, seed=2, labels=labels)[0])
        random = net.features(generate_batch(100, seed=3)[0])
    same_floor = frechet_distance_interval(same, reference, n_boot=20, strata=labels).fd.estimate
    random_floor = frechet_distance_interval(random, reference, n_boot=20).fd.estimate
    assert same_floor < 0.5 * random_floor


def test_score_takes_the_floor_from_the_same_label_real_images():
    """Passing the reference's own images as the 'real' set makes the floor equal the reference's FD: the
    floor is measured on exactly those rows, with the labels as strata."""
    from fastsample.zoo.data import generate_batch

    labels = torch.arange(20) % 10
    real, _ = generate_batch(20, seed=5, labels=labels)
    images = ((real + 1) / 2).clamp(0, 1)
    reference = fr.Recipe("reference", "diffusers", "dpm++2m", 4)
    other = fr.Recipe("other", "diffusers", "ddim", 4)
    collected = {
        "reference": fr.Samples(reference, [images], [1.0, 1.0], samples=160, batches=1),
        "other": fr.Samples(other, [images.flip(0)], [0.5, 0.5], samples=160, batches=1),
    }
    pool, _ = generate_batch(300, seed=6)
    from fastsample.zoo.default import load_feature_net

    with torch.no_grad():
        pool_features = load_feature_net().features(pool)
    results = {
        r.name: r
        for r in fr.score(collected, "reference", labels, pool_features, images, n_boot=50, fd_boot=20)
    }
    ref = results["reference"]
    assert ref.fd.floor.estimate == pytest.approx(ref.fd.fd.estimate)
    assert ref.psnr is None and results["other"].psnr is not None
    assert results["other"].hue_accuracy is not None and math.isfinite(results["other"].shape_accuracy)
    assert results["other"].nfe == 8.0 and results["other"].latency == 0.5


def test_fastest_is_chosen_by_the_per_round_ratio_to_the_reference():
    """The last three rounds were slowed for everyone (the reference took 2x). 'w' has the lower median
    latency, but against the reference timed in the same rounds it is the slower one (median ratio 0.11 vs
    0.1): 'a' is picked."""
    reference = _result("reference", "diffusers", [10.0, 10.0, 20.0, 20.0, 20.0], fd=(2.0, 1.8, 2.4))
    a = _result("a", "diffusers", [1.0, 1.0, 2.0, 2.0, 2.0], psnr=31.0)  # ratio 0.1 in every round
    w = _result("w", "diffusers", [1.5, 1.5, 1.5, 2.2, 2.2], psnr=31.0)  # ratios .15 .15 .075 .11 .11
    f = _result("f", "fastsample", [1.0] * 5, psnr=31.0)
    assert w.latency < a.latency
    entry = fr.frontier([reference, a, w, f])[0]
    assert entry.fastest["diffusers"].name == "a"
    without_reference = fr.frontier([a, w, f], reference=None)[0]
    assert without_reference.fastest["diffusers"].name == "w"  # no reference: the median latency decides
