"""``fastsample bench``: the quick run on a tiny random PixelDiT, its bookkeeping, the recipe sets and the
flags."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fastsample.cli import build_parser, main
from fastsample.eval import bench
from fastsample.eval.frontier import DIFFUSERS_CACHES, FAMILIES, Recipe, RecipeRunner
from fastsample.testing import tiny_pixel_dit_transformer


@pytest.fixture(scope="module")
def tiny_pipeline_dir(tmp_path_factory):
    """A tiny random-weight PixelDiTPipeline (32×32 RGB, 10 classes) saved with save_pretrained."""
    from fastsample.pipelines.pixel_dit import PixelDiTPipeline
    from fastsample.zoo.default import load_default_scheduler

    transformer = tiny_pixel_dit_transformer(sample_size=32, patch_size=8)
    # Zero class embeddings: conditional and unconditional predictions coincide exactly, so Adaptive
    # Guidance's cos(x̂0_c, x̂0_u) = 1 and it must switch to the conditional half after its first step.
    with torch.no_grad():
        for block in transformer.transformer_blocks:
            block.norm1.emb.class_embedder.embedding_table.weight.zero_()
    pipe = PixelDiTPipeline(transformer=transformer, scheduler=load_default_scheduler())
    path = tmp_path_factory.mktemp("tiny-pixel-dit")
    pipe.save_pretrained(path)
    return path


def _run(argv: list[str]) -> int:
    return main(["bench", *argv])


@pytest.fixture(scope="module")
def quick_report(tiny_pipeline_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["--quick", "--pipeline", str(tiny_pipeline_dir), "--out", str(out), "--threads", "1"]
    assert _run(argv + ["--reference-samples", "64", "--samples", "8", "--batch-size", "4"]) == 0
    return out


def test_quick_run_writes_every_artefact(quick_report):
    for name in ("report.md", "results.json", "vp_pareto.png", "vp_grid.png"):
        assert (quick_report / name).stat().st_size > 0, name
    results = json.loads((quick_report / "results.json").read_text())
    rows = results["models"]["vp"]["rows"]
    expected = ["reference", *(r.name for r in bench.recipe_set("vp", "quick"))]
    assert sorted(row["recipe"] for row in rows) == sorted(expected)
    text = (quick_report / "report.md").read_text()
    assert "### Frontier" in text and "| quality level |" in text and "PixelDiTPipeline from" in text
    assert "Headline" in text and "floor at the same 8 samples with the same labels" in text
    for row in rows:  # 8 samples in batches of 4: two timed rounds per recipe
        assert len(row["seconds"]) == 2
    assert len(results["models"]["vp"]["frontier"]) == 3


def test_quick_run_bookkeeping(quick_report):
    rows = {
        row["recipe"]: row
        for row in json.loads((quick_report / "results.json").read_text())["models"]["vp"]["rows"]
    }
    # plain rows: every step evaluates the conditional and the unconditional sample of every image.
    assert rows["reference"]["nfe"] == bench.QUICK_REFERENCE_STEPS * 2
    assert rows["dpm++2m-4"]["nfe"] == 8 and rows["dpm++2m-4"]["units"] == 1.0
    assert rows["reference"]["psnr"] is None and rows["dpm++2m-4"]["psnr"] is not None
    # Adaptive Guidance (fixture: c = u exactly) runs the full CFG batch at step 1, then the conditional
    # half only: 2 + (steps − 1) samples per image, every unit computed for them.
    assert rows["fs-ghvb-2-ag"]["nfe"] == 2 + 1 and rows["fs-ghvb-2-ag"]["cost"] == 3
    # FORA interval 2 over 4 steps computes steps 0 and 2: half the units, cost = 8 × 0.5
    assert rows["fs-ghvb-4-fora2"]["units"] == 0.5 and rows["fs-ghvb-4-fora2"]["cost"] == 4
    for row in rows.values():
        assert row["latency_p10"] <= row["latency_s"] <= row["latency_p90"]
        assert 0 <= row["shape_accuracy"] <= 1 and 0 <= row["hue_accuracy"] <= 1


def test_grid_has_a_real_row_and_one_column_per_class(quick_report):
    from PIL import Image

    # 8 balanced samples → classes 0..7; rows: real, reference, then the frontier recipes (at least none)
    grid = Image.open(quick_report / "vp_grid.png")
    width, height = grid.size
    assert width == 150 + 8 * (64 + 4)
    assert (height - 28) % (64 + 4) == 0 and (height - 28) // (64 + 4) >= 2


def test_every_cache_is_undone_exactly(tiny_pipeline_dir):
    """The recipe's scheduler, guidance hook and cache (fastsample's and diffusers') are all removed after the
    block: same scheduler object, no hook left, same outputs as before."""
    from fastsample.pipelines.pixel_dit import PixelDiTPipeline

    pipe = PixelDiTPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    kwargs = {"class_labels": [0, 1], "num_inference_steps": 3, "latents": noise, "output_type": "np"}
    original = pipe.scheduler
    before = pipe(**kwargs).images
    runner = RecipeRunner(pipe, 4.0)
    recipes = [
        Recipe("f", "fastsample", "ghvb", 3, "ag", "fora", (("interval", 2),), kernels=True),
        Recipe("d1", "diffusers", "dpm++2m", 3, cache="diffusers-fbc", cache_options=(("threshold", 0.1),)),
        Recipe(
            "d2",
            "diffusers",
            "unipc",
            3,
            cache="diffusers-taylorseer",
            cache_options=(("cache_interval", 2),),
        ),
        Recipe("d3", "diffusers", "dpm++2m", 3, cache="diffusers-pab"),
        Recipe(
            "d4", "diffusers", "dpm++2m", 3, cache="diffusers-magcache", cache_options=(("threshold", 0.1),)
        ),
    ]
    for recipe in recipes:
        out = runner.call(recipe, torch.tensor([0, 1]), noise)
        assert out["images"].shape == (2, 3, 32, 32) and out["calls"] == 3
        assert pipe.scheduler is original
        assert "forward" not in vars(pipe.transformer)
        registry = getattr(pipe.transformer, "_diffusers_hook", None)
        assert registry is None or not registry.hooks
    assert len(runner.mag_ratios[("dpm++2m", 3)]) == 3  # calibrated once at the recipe's steps
    np.testing.assert_array_equal(pipe(**kwargs).images, before)


def test_recipe_sets():
    for model in bench.MODELS:
        for size in bench.SIZES:
            recipes = bench.recipe_set(model, size)
            assert len({r.name for r in recipes}) == len(recipes) and "reference" not in {
                r.name for r in recipes
            }
            assert {r.family for r in recipes} >= {"diffusers", "fastsample"} and all(
                r.family in FAMILIES for r in recipes
            )
    default = bench.recipe_set("vp", "default")
    assert {"diffusers-fbc", "diffusers-taylorseer", "diffusers-magcache"} <= {r.cache for r in default}
    assert "cache-dit" in {r.family for r in default}
    full = bench.recipe_set("vp", "full")
    diffusers_full = [r for r in full if r.family == "diffusers"]
    assert {r.scheduler for r in diffusers_full} == {
        "dpm++2m",
        "dpm++2m-karras",
        "unipc",
        "ddim",
        "euler",
        "deis",
    }
    assert {r.steps for r in diffusers_full} >= {5, 10, 20, 50}
    assert {r.cache for r in diffusers_full} == {None, *DIFFUSERS_CACHES}
    with pytest.raises(ValueError, match="size must be one of"):
        bench.recipe_set("vp", "huge")
    with pytest.raises(ValueError, match="model must be one of"):
        bench.recipe_set("ve")


def test_flow_sets_use_flow_schedulers_only():
    from fastsample.solvers.presets import build, family_of

    flow_config = {
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "num_train_timesteps": 1000,
        "shift": 3.0,
    }
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = FlowMatchEulerDiscreteScheduler.from_config(flow_config).config
    for size in bench.SIZES:
        for name in {r.scheduler for r in bench.recipe_set("flow", size)}:
            scheduler = build(name, config, baselines=True)
            assert family_of(scheduler.config) == "flow" or scheduler.config.get("use_flow_sigmas"), name


def test_recipe_scheduler_matches_diffusers_class():
    from diffusers import DEISMultistepScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    from fastsample.solvers import GHVBScheduler
    from fastsample.solvers.presets import build
    from fastsample.zoo.default import load_default_scheduler

    config = load_default_scheduler().config
    expected = {
        "dpm++2m": DPMSolverMultistepScheduler,
        "dpm++2m-karras": DPMSolverMultistepScheduler,
        "unipc": UniPCMultistepScheduler,
        "deis": DEISMultistepScheduler,
        "ghvb": GHVBScheduler,
    }
    for name, cls in expected.items():
        scheduler = build(name, config, baselines=True)
        assert type(scheduler) is cls
        assert scheduler.config.beta_schedule == config.beta_schedule  # the training schedule is kept
    assert build("dpm++2m-karras", config, baselines=True).config.use_karras_sigmas


def test_probe_records_why_a_recipe_cannot_run(tiny_pipeline_dir):
    from fastsample.pipelines.pixel_dit import PixelDiTPipeline

    pipe = PixelDiTPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    runner = RecipeRunner(pipe, 4.0)
    noise = torch.randn(2, 3, 32, 32)
    labels = torch.tensor([0, 1])
    assert bench.probe(runner, Recipe("ok", "diffusers", "ddim", 4), labels, noise) is None
    bad = Recipe("bad", "diffusers", "dpm++2m", 4, cache="diffusers-fbc", cache_options=(("nope", 1),))
    reason = bench.probe(runner, bad, labels, noise)
    assert reason is not None and reason.startswith("TypeError")


def test_unknown_config_is_refused(tmp_path, capsys):
    assert _run(["--configs", "nope,ddim-10", "--out", str(tmp_path)]) == 2
    assert "unknown config(s) ['nope', 'ddim-10']" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("flag", [["--samples", "0"], ["--samples", "-3"], ["--batch-size", "0"]])
def test_non_positive_counts_are_refused(flag, capsys):
    with pytest.raises(SystemExit) as error:
        build_parser().parse_args(["bench", *flag])
    assert error.value.code == 2
    assert "expected an integer >= 1" in capsys.readouterr().err


def test_other_bad_flags(tmp_path, capsys):
    assert _run(["--samples", "1", "--out", str(tmp_path)]) == 2
    assert "argument --samples: must be >= 2" in capsys.readouterr().err
    assert _run(["--guidance-scale", "1.0", "--out", str(tmp_path)]) == 2
    assert "argument --guidance-scale: must be > 1" in capsys.readouterr().err
    assert _run(["--pipeline", str(tmp_path), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "argument --pipeline" in err and "no model_index.json" in err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--quick", "--full"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_settings_pick_the_set_and_the_models(tmp_path):
    from fastsample.cli.bench import settings_from_args

    def settings(*argv):
        args = build_parser().parse_args(["bench", "--out", str(tmp_path), *argv])
        return settings_from_args(args)

    both = settings("--model", "both", "--quick")
    assert both.models == ("vp", "flow") and both.size == "quick" and both.reference_steps == 8
    assert both.recipes["flow"] == bench.recipe_set("flow", "quick")
    chosen = settings("--configs", "dpm++2m-10,fs-ghvb-10")
    assert [r.name for r in chosen.recipes["vp"]] == ["dpm++2m-10", "fs-ghvb-10"]
    assert settings("--full").size == "full" and settings().reference_steps == 100


def test_cache_dit_dbcache_runs_and_is_undone(tiny_pipeline_dir):
    """With the optional peer installed, DBCache runs on the DiT through the explicit adapter (the pipeline is
    restored exactly afterwards); threshold 0 reuses nothing, so the images equal the uncached ones."""
    pytest.importorskip("cache_dit")
    from fastsample.pipelines.pixel_dit import PixelDiTPipeline

    pipe = PixelDiTPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    runner = RecipeRunner(pipe, 4.0)
    noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1])
    plain = runner.call(Recipe("p", "diffusers", "dpm++2m", 6), labels, noise)
    exact = (("max_warmup_steps", 0), ("residual_diff_threshold", 0.0))
    cached = runner.call(
        Recipe("c", "cache-dit", "dpm++2m", 6, cache="cache-dit-dbcache", cache_options=exact), labels, noise
    )
    assert torch.equal(cached["images"], plain["images"]) and cached["unit_samples"] == cached["samples"]
    again = runner.call(Recipe("p", "diffusers", "dpm++2m", 6), labels, noise)
    assert torch.equal(again["images"], plain["images"])
    assert type(pipe.transformer.transformer_blocks).__name__ == "ModuleList"


def test_a_flow_pipeline_folder_gets_the_flow_recipes(tmp_path):
    """A --pipeline folder with a flow-matching scheduler is benchmarked with the flow set and the FlowMatch
    Euler reference, whatever --model says; a recipe that cannot run on it is listed with its error."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from fastsample.pipelines.pixel_dit import PixelDiTPipeline

    transformer = tiny_pixel_dit_transformer(sample_size=32, patch_size=8)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    PixelDiTPipeline(transformer=transformer, scheduler=scheduler).save_pretrained(tmp_path / "flow")
    out = tmp_path / "out"
    argv = ["--quick", "--pipeline", str(tmp_path / "flow"), "--out", str(out), "--threads", "1"]
    assert _run(argv + ["--reference-samples", "32", "--quiet"]) == 0
    section = json.loads((out / "results.json").read_text())["models"]["vp"]
    assert section["reference"]["scheduler"] == "flow-euler"
    ran = {row["recipe"] for row in section["rows"]}
    flow_names = {r.name for r in bench.recipe_set("flow", "quick")}
    assert ran | set(section["skipped"]) == flow_names | {"reference"}
    assert all(isinstance(reason, str) and reason for reason in section["skipped"].values())
