"""fastsample.recipe, fastsample.tune and ``optimize(pipe, recipe=...)``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastsample.errors import ArtifactError
from fastsample.optimize import optimize
from fastsample.recipe import SamplingRecipe, denoiser_hash, load_recipe
from fastsample.solvers import GHVBScheduler
from fastsample.testing import PIPELINE_NAMES, call_kwargs, tiny_pipeline
from fastsample.tune import DIFFUSERS_SPACE, Evaluation, SearchSpace, _survivors, pareto_front, tune

SMALL = SearchSpace(
    schedulers=("dpm++2m", "ghvb"),
    steps=(3, 6),
    guidance=(None, "ag"),
    caches=(None, ("fora", {"interval": 2})),
)


def _recipe(pipe, **overrides) -> SamplingRecipe:
    fields = dict(
        scheduler="ghvb", num_inference_steps=3, guidance="ag", cache="fora", cache_options={"interval": 2}
    )
    fields.update(overrides)
    return SamplingRecipe(**fields, provenance=SamplingRecipe.provenance_for(pipe, guidance_scale=4.0))


# ------------------------------------------------------------------------------------------------ recipe
def test_recipe_round_trip_and_name(tmp_path):
    pipe = tiny_pipeline("dit")
    recipe = _recipe(pipe, figures={"psnr_db": 31.5})
    path = tmp_path / "recipe.json"
    recipe.save(path)
    assert load_recipe(path) == recipe
    assert recipe.name == "ghvb-3+ag+fora(interval=2)"
    assert recipe.call_kwargs == {"num_inference_steps": 3}
    assert recipe.provenance["model_hash"] == denoiser_hash(pipe)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"scheduler": "ghvbb"}, "scheduler"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"guidance": "cfg-wrong"}, "guidance"),
        ({"format": "something-else"}, "format"),
        ({"colour": "red"}, "unknown field"),
    ],
)
def test_bad_recipe_file_is_refused_naming_the_problem(tmp_path, change, match):
    pipe = tiny_pipeline("dit")
    data = {**_recipe(pipe).to_dict(), **change}
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=match) as info:
        load_recipe(path)
    assert "recipe.json" in str(info.value)


def test_optimize_applies_a_recipe_exactly_and_restores(tmp_path):
    pipe = tiny_pipeline("dit")
    before = pipe(**call_kwargs("dit", num_inference_steps=3)).images
    recipe = _recipe(pipe)
    recipe.save(tmp_path / "r.json")
    explicit = recipe.optimize_arguments(pipe)
    with optimize(pipe, **explicit) as handle:
        assert handle.call_kwargs == {}  # no recipe: the call's steps are the user's
        expected = pipe(**call_kwargs("dit", num_inference_steps=3)).images
    with optimize(pipe, recipe=tmp_path / "r.json") as handle:
        assert isinstance(pipe.scheduler, GHVBScheduler) and handle.cache is not None
        assert handle.call_kwargs == {"num_inference_steps": 3}
        assert "recipe: ghvb-3+ag+fora(interval=2)" in handle.summary()
        got = pipe(**call_kwargs("dit", **handle.call_kwargs)).images
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(pipe(**call_kwargs("dit", num_inference_steps=3)).images, before)


def test_recipe_for_another_model_is_refused(tmp_path):
    recipe = _recipe(tiny_pipeline("dit", seed=0))
    other = tiny_pipeline("dit", seed=1)
    scheduler = other.scheduler
    with pytest.raises(ValueError, match="tuned on another model"):
        optimize(other, recipe=recipe)
    assert other.scheduler is scheduler
    with pytest.raises(ValueError, match="either `recipe`"):
        optimize(tiny_pipeline("dit"), recipe=recipe, cache=None)
    with pytest.raises(TypeError, match="recipe must be"):
        optimize(tiny_pipeline("dit"), recipe=42)


# ----------------------------------------------------------------------------------------- search logic
def _evaluation(cost: float, psnr: float, name_steps: int = 1) -> Evaluation:
    recipe = SamplingRecipe(scheduler="ddim", num_inference_steps=name_steps)
    return Evaluation(recipe, np.full(3, psnr), cost, 0.0)


def test_pareto_front_and_survivors():
    items = [
        _evaluation(1, 20),
        _evaluation(2, 25),
        _evaluation(3, 24),
        _evaluation(4, 31),
        _evaluation(5, 30),
    ]
    assert [(e.cost, e.median_psnr) for e in pareto_front(items)] == [(1, 20), (2, 25), (4, 31)]
    alive = [10, 11, 12, 13, 14]
    # threshold 29: near = costs 4, 5; keep ceil(5/3) = 2 cheapest near + the front (1, 2, 4)
    assert _survivors(items, alive, 29.0, 3) == [10, 11, 13, 14]


def test_grids_and_guidance_options_in_the_space():
    space = SearchSpace(
        schedulers=("ghvb", "dpm++2m"),
        steps=(4,),
        scheduler_options=({}, {"grid": "spacing"}, {"grid": "karras"}),
        guidance=(None, ("window", {"end": 0.6})),
    )
    pipe = tiny_pipeline("dit")  # VP: GHVB's own grid is Karras, so {"grid": "karras"} adds nothing
    points = {(r.scheduler, tuple(r.scheduler_options.items()), r.guidance) for r in space.recipes(pipe)}
    assert ("ghvb", (("grid", "spacing"),), "window") in points
    assert not any(s == "ghvb" and o == (("grid", "karras"),) for s, o, _ in points)
    assert not any(s == "dpm++2m" and o for s, o, _ in points)  # DPM-Solver takes no `grid`
    recipe = next(r for r in space.recipes(pipe) if r.scheduler_options and r.guidance == "window")
    assert recipe.name == "ghvb(grid=spacing)-4+window(end=0.6)"
    with optimize(pipe, recipe=SamplingRecipe(**{**recipe.__dict__, "provenance": _recipe(pipe).provenance})):
        assert pipe.scheduler.config.grid == "spacing"
    # the cost counts the rows the model really runs: a window's skipped unconditional rows are not paid
    result = tune(
        pipe,
        class_labels=[1],
        floor_db=-100.0,
        samples=(1,),
        reference_steps=8,
        progress=False,
        space=SearchSpace(schedulers=("ghvb",), steps=(4,), guidance=(None, ("window", {"end": 0.5}))),
    )
    cost = {e.recipe.guidance: e.cost for e in result.final}
    assert cost[None] == pytest.approx(8.0) and cost["window"] < cost[None]
    with pytest.raises(ValueError, match="guidance entries"):
        SearchSpace(schedulers=("ddim",), steps=(4,), guidance=(("window",),))


def test_space_validation_and_filtering():
    with pytest.raises(ValueError, match="schedulers"):
        SearchSpace(schedulers=(), steps=(4,))
    with pytest.raises(ValueError, match="caches"):
        SearchSpace(schedulers=("ddim",), steps=(4,), caches=("fora",))
    space = SearchSpace(
        schedulers=("ddim",), steps=(4,), caches=(None, ("fora", {})), dit_savings=(False, True)
    )
    assert space.size == 4 and len(space.recipes()) == 4
    assert len(space.recipes(tiny_pipeline("sd"))) == 1  # no cache, no DiT savings on a UNet
    vp = {r.scheduler for r in DIFFUSERS_SPACE.recipes(tiny_pipeline("dit"))}
    assert vp == {"dpm++2m", "dpm++2m-karras", "unipc", "deis", "ddim", "euler", "pndm"}
    flow = {r.scheduler for r in DIFFUSERS_SPACE.recipes(tiny_pipeline("sd3"))}
    assert flow == {"dpm++2m", "unipc", "flow-euler"}  # no DDIM / PNDM preset for flow matching


# ----------------------------------------------------------------------------------------------- tune
def test_tune_chooses_the_cheapest_confirmed_recipe_above_the_floor():
    pipe = tiny_pipeline("dit")
    scheduler = pipe.scheduler
    result = tune(
        pipe,
        class_labels=[0, 1],
        floor_db=20.0,
        space=SMALL,
        samples=(2, 4),
        reference_steps=20,
        progress=False,
    )
    assert pipe.scheduler is scheduler  # restored after every candidate
    assert [len(r) for r in result.rounds][0] == SMALL.size and len(result.rounds[1]) < SMALL.size
    chosen = result.chosen
    assert chosen is not None and chosen.median_psnr >= 20.0 and chosen.samples == 4
    cheaper = [e for e in result.final if e.cost < chosen.cost]
    assert all(e.median_psnr < 20.0 for e in cheaper)
    # the clock-free cost: plain CFG costs 2 denoiser rows per step and image
    plain = {e.recipe.name: e.cost for e in result.rounds[0]}
    assert plain["dpm++2m-3"] == pytest.approx(6.0) and plain["ghvb-6"] == pytest.approx(12.0)
    assert plain["dpm++2m-6+fora(interval=2)"] < plain["dpm++2m-6"]
    recipe = result.recipe()
    assert recipe.figures["psnr_db"] == pytest.approx(chosen.median_psnr, abs=1e-3)
    assert recipe.provenance["model_hash"] == denoiser_hash(pipe)
    assert "chosen" in result.table()


def test_tune_without_a_passing_recipe_says_so():
    pipe = tiny_pipeline("dit")
    space = SearchSpace(schedulers=("ddim",), steps=(1,))
    result = tune(
        pipe, class_labels=[0], floor_db=90.0, space=space, samples=(1,), reference_steps=8, progress=False
    )
    assert result.chosen is None
    with pytest.raises(ValueError, match="no candidate reached the floor of 90 dB"):
        result.recipe()


def test_tune_bad_arguments():
    pipe = tiny_pipeline("dit")
    with pytest.raises(ValueError, match="exactly one of"):
        tune(pipe)
    with pytest.raises(ValueError, match="samples"):
        tune(pipe, class_labels=[0], samples=(4, 2))
    with pytest.raises(ValueError, match="eta"):
        tune(pipe, class_labels=[0], eta=1)
    with pytest.raises(ValueError, match="call_kwargs"):
        tune(pipe, class_labels=[0], call_kwargs={"generator": None})


@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_tune_runs_on_every_fixture(name):
    if name != "dit":
        pytest.importorskip("transformers")
    pipe = tiny_pipeline(name)
    kwargs = call_kwargs(name)
    conditions = (
        {"class_labels": kwargs["class_labels"]} if name == "dit" else {"prompts": [kwargs["prompt"]]}
    )
    reserved = ("generator", "output_type", "num_inference_steps", "prompt", "class_labels")
    extra = {k: v for k, v in kwargs.items() if k not in reserved}  # negative prompt, true CFG, ...
    caches = (None,) if name in ("sd", "sdxl") else (None, ("fora", {"interval": 2}))
    # Flux passes custom sigmas, which only FlowMatch Euler (and fastsample's schedulers) accept
    scheduler = "flow-euler" if name == "flux" else "dpm++2m"
    space = SearchSpace(schedulers=(scheduler,), steps=(2, 4), caches=caches)
    result = tune(
        pipe,
        **conditions,
        call_kwargs=extra,
        floor_db=-100.0,
        space=space,
        samples=(1,),
        reference_steps=6,
        progress=False,
    )
    assert result.chosen is not None and result.chosen.cost == min(e.cost for e in result.final)
    assert result.recipe().provenance["pipeline"] == type(pipe).__name__


def test_cli_tune_writes_recipe_and_front(tmp_path):
    from fastsample.cli import main

    out = tmp_path / "tuned"
    argv = [
        "tune",
        "--pipeline",
        "fixture:dit",
        "--schedulers",
        "dpm++2m",
        "--steps",
        "2",
        "4",
        "--samples",
        "1",
        "2",
        "--reference-steps",
        "8",
        "--floor",
        "-100",
        "--labels",
        "1",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    recipe = load_recipe(out / "recipe.json")
    assert recipe.scheduler == "dpm++2m" and (out / "front.png").stat().st_size > 0
    assert "fastsample tune" in (out / "front.md").read_text()
    assert main(["tune", "--pipeline", "fixture:dit", "--samples", "4", "2", "--out", str(out)]) == 2
    assert main(["tune", "--pipeline", "fixture:dit", "--schedulers", "nope", "--out", str(out)]) == 2
