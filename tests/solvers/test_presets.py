"""fastsample.solvers.presets: the one table of named solver configurations."""

import pytest
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

from fastsample.solvers import GHVBScheduler, HeavyBallScheduler, MomentumDPMSolverMultistepScheduler, presets
from fastsample.zoo.solver_table import SD3_SCHEDULER_CONFIG, SD15_SCHEDULER_CONFIG

VP, FLOW = dict(SD15_SCHEDULER_CONFIG), dict(SD3_SCHEDULER_CONFIG)
# the configurations by hand: "ghvb" is the class default; the others pin the equal-step tables
TABLE = {"variable_step": False, "grid": "spacing"}
BY_HAND = {
    ("ghvb", "vp"): lambda c: GHVBScheduler.from_config(c),
    ("hb", "vp"): lambda c: HeavyBallScheduler.from_config(
        c, plms_order=4, momentum=0.8, final_sigmas_type="zero", **TABLE
    ),
    ("plms", "vp"): lambda c: GHVBScheduler.from_config(c, ghvb_order=4, final_sigmas_type="zero", **TABLE),
    ("dpm++2m-hb", "vp"): lambda c: MomentumDPMSolverMultistepScheduler.from_config(c, momentum=0.8),
    ("ghvb", "flow"): lambda c: GHVBScheduler.from_config(c),
    ("hb", "flow"): lambda c: HeavyBallScheduler.from_config(c, plms_order=4, momentum=0.8, **TABLE),
    ("plms", "flow"): lambda c: GHVBScheduler.from_config(c, ghvb_order=4, **TABLE),
    ("dpm++2m-hb", "flow"): lambda c: MomentumDPMSolverMultistepScheduler.from_config(
        c, momentum=0.8, use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0
    ),
}


@pytest.mark.parametrize(("shortcut", "family"), sorted(BY_HAND))
def test_shortcuts_build_the_recorded_configurations(shortcut, family):
    base = VP if family == "vp" else FLOW
    ours, expected = presets.build(shortcut, base), BY_HAND[shortcut, family](base)
    assert type(ours) is type(expected) and dict(ours.config) == dict(expected.config)


def test_baselines_and_errors():
    assert presets.SHORTCUTS == ("ghvb", "plms", "hb", "dpm++2m-hb")
    assert isinstance(presets.build("ddim", VP, baselines=True), DDIMScheduler)
    dpm = presets.build("dpm++2m", VP, baselines=True)
    assert isinstance(dpm, DPMSolverMultistepScheduler) and dpm.config.algorithm_type == "dpmsolver++"
    with pytest.raises(ValueError, match="unknown scheduler 'ddim'"):
        presets.build("ddim", VP)  # a baseline only where asked for
    with pytest.raises(ValueError, match="family must be one of"):
        presets.find("ghvb", "ve")
    assert presets.family_of(FlowMatchEulerDiscreteScheduler().config) == "flow"


def test_benchmark_entries_are_the_table_rows_in_order():
    from fastsample.solvers import benchmark_entries

    names = [(e.name, e.family) for e in benchmark_entries()]
    assert names == [(p.name, p.family) for p in presets.PRESETS if p.in_table]
    assert names[0] == ("GHVB default", "vp") and names[-1] == ("DPM++2M + HB 0.8 (flow)", "flow")
    assert len(names) == 16


def test_optimize_and_bench_read_the_table():
    from fastsample.eval import frontier
    from fastsample.optimize import SCHEDULER_SHORTCUTS

    assert SCHEDULER_SHORTCUTS == presets.SHORTCUTS
    assert frontier.SCHEDULERS == presets.BASELINE_SHORTCUTS + presets.SHORTCUTS
