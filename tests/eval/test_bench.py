"""``fastsample bench``: the quick run on a tiny random PixelDiT, its NFE bookkeeping and its flags."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fastsample.cli import build_parser, main
from fastsample.eval import bench
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
    assert _run(argv + ["--reference-samples", "64"]) == 0
    return out


def test_quick_run_writes_every_artefact(quick_report):
    for name in ("report.md", "results.json", "report_pareto.png"):
        assert (quick_report / name).stat().st_size > 0, name
    results = json.loads((quick_report / "results.json").read_text())
    names = [recipe.name for recipe in bench.QUICK_RECIPES]
    assert [row["config"] for row in results["rows"]] == names
    for name in names:
        assert (quick_report / "grids" / f"{name}.png").stat().st_size > 0
    text = (quick_report / "report.md").read_text()
    assert "| config |" in text and "Verdict" in text and "PixelDiTPipeline from" in text


def test_grid_has_one_row_per_class(quick_report):
    from PIL import Image

    # 4 balanced samples → classes 0..3, one image each: a 1-column grid of 4 rows of 32 px (2 px padding).
    grid = Image.open(quick_report / "grids" / "quick-ddim.png")
    assert grid.size == (2 + 34, 2 + 4 * 34)


def test_baseline_ratio_and_nfe(quick_report):
    rows = {row["config"]: row for row in json.loads((quick_report / "results.json").read_text())["rows"]}
    baseline = rows["quick-baseline"]
    assert baseline["latency_ratio"] == 1.0 and baseline["speedup"] == 1.0
    # plain rows: every step evaluates the conditional and the unconditional sample of every image.
    for name in ("quick-baseline", "quick-ddim"):
        recipe = bench.RECIPES[name]
        assert rows[name]["nfe"] == recipe.steps * 2
        assert rows[name]["denoiser_calls"] == recipe.steps
    # Adaptive Guidance (fixture: c = u exactly) runs the full CFG batch at step 1, then the conditional
    # half only: 2 + (steps − 1) samples per image, in the same number of denoiser calls.
    ag = bench.RECIPES["quick-ghvb-ag"]
    assert rows["quick-ghvb-ag"]["nfe"] == 2 + (ag.steps - 1)
    assert rows["quick-ghvb-ag"]["denoiser_calls"] == ag.steps


def test_saturation_matches_colorsys_and_recipe_is_undone(tiny_pipeline_dir):
    """Saturation against the standard library's HSV conversion; the recipe's scheduler, guidance hook and
    cache are all removed after the block (same scheduler object, same outputs as before)."""
    from fastsample.pipelines.pixel_dit import PixelDiTPipeline

    pipe = PixelDiTPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    noise = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    kwargs = {"class_labels": [0, 1, 2], "num_inference_steps": 2, "latents": noise, "output_type": "np"}
    original = pipe.scheduler
    before = pipe(**kwargs).images
    with bench.applied(bench.RECIPES["composed"], pipe, pipe.scheduler.config):
        assert type(pipe.scheduler).__name__ == "GHVBScheduler"
        pipe(**kwargs)
    assert pipe.scheduler is original
    assert "forward" not in vars(pipe.transformer)
    np.testing.assert_array_equal(pipe(**kwargs).images, before)
    # HSV saturation with the standard library's colorsys as the reference.
    import colorsys

    pixels = before.reshape(-1, 3).astype(np.float64)
    expected = np.mean([colorsys.rgb_to_hsv(*p)[1] for p in pixels])
    tensor = torch.from_numpy(before).permute(0, 3, 1, 2)
    assert bench.mean_saturation(tensor) == pytest.approx(expected, abs=1e-6)


def test_recipe_scheduler_matches_diffusers_class():
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler

    from fastsample.solvers import GHVBScheduler, HeavyBallScheduler
    from fastsample.zoo.default import load_default_scheduler

    config = load_default_scheduler().config
    expected = {
        "dpm++2m": DPMSolverMultistepScheduler,
        "ddim": DDIMScheduler,
        "pndm": PNDMScheduler,
        "euler": EulerDiscreteScheduler,
        "ghvb": GHVBScheduler,
        "hb": HeavyBallScheduler,
    }
    for name, cls in expected.items():
        scheduler = bench.build_scheduler(name, config)
        assert type(scheduler) is cls
        assert scheduler.config.beta_schedule == config.beta_schedule  # the training schedule is kept
    baseline = bench.build_scheduler("dpm++2m", config)
    assert baseline.config.solver_order == 2 and baseline.config.algorithm_type == "dpmsolver++"


def test_unknown_config_is_refused(tmp_path, capsys):
    assert _run(["--configs", "nope,ddim-10", "--out", str(tmp_path)]) == 2
    assert "unknown config(s) ['nope']" in capsys.readouterr().err
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


def test_image_grid_rows_are_classes():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    images = torch.arange(7.0).view(7, 1, 1, 1).expand(7, 3, 2, 2)
    assert bench.grid_columns(labels) == 2  # classes 1 and 2 have two images each
    grid = bench.image_grid_by_class(images, labels)
    assert grid[:, 0, 0, 0].tolist() == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]


def test_verdict_picks_the_fastest_row_within_tolerance():
    def row(name, latency, fd):
        return {"config": name, "latency_s": latency, "fd": fd, "speedup": 10.0 / latency}

    rows = [row("baseline", 10.0, 5.0), row("a", 2.0, 5.4), row("b", 1.0, 6.0), row("c", 4.0, 4.0)]
    verdict = bench.best_recipe(rows, "baseline", tolerance=0.1)
    assert "**a** (FD 5.4) at 5.00x" in verdict and "overall: **b**, 10.00x" in verdict
    assert "matching the baseline's FD (5, tolerance +0 %): **c**" in bench.best_recipe(rows, "baseline", 0.0)
    slow = [row("baseline", 10.0, 1.0), row("b", 1.0, 6.0), row("c", 4.0, 4.0)]
    assert bench.best_recipe(slow, "baseline", 0.1).startswith("No recipe matched the baseline's FD (1,")
