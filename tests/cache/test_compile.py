"""Regional compilation of the cached units: 0 graph breaks and 0 recompiles over a static-schedule run."""

import pytest
import torch
from torch._dynamo.utils import counters

from fastsample.cache import enable_cache
from tests.cache._models import sample, tiny_model


@pytest.mark.slow
def test_static_schedule_compiles_once_per_unit_type_without_breaks_or_recompiles():
    torch._dynamo.reset()
    model = tiny_model("dit")
    eager = enable_cache(model, "fora", interval=2)
    reference = sample(model, "dit", 4)
    eager.disable()

    counters.clear()
    # fullgraph=True turns a graph break into an error and error_on_recompile a recompile; the eager backend
    # keeps the test fast (dynamo's tracing and guards are under test, not Inductor's code generation)
    with torch._dynamo.config.patch(error_on_recompile=True):
        handle = enable_cache(model, "fora", interval=2, compile={"backend": "eager", "fullgraph": True})
        compiled = sample(model, "dit", 4)
        assert dict(counters["graph_break"]) == {}
        assert counters["stats"]["unique_graphs"] == 2  # attn1 and ff, each shared by both blocks
        assert handle.stats().hit_ratio == 0.5
        torch.testing.assert_close(compiled, reference, rtol=1e-5, atol=1e-5)

        counters.clear()  # a second sampling run (a new pipeline call) compiles nothing
        handle.new_run()
        sample(model, "dit", 4, seed=1)
        assert dict(counters["graph_break"]) == {} and counters["stats"]["unique_graphs"] == 0
    handle.disable()
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("method,knobs", [("taylorseer", {"interval": 2, "order": 2})])
def test_forecasting_policy_compiles_without_breaks_or_recompiles(method, knobs):
    """The forecast is plain tensor arithmetic outside the compiled regions: the regions see the same graphs
    as FORA's, with no graph break and no recompile over a run and a second run."""
    torch._dynamo.reset()
    model = tiny_model("dit")
    eager = enable_cache(model, method, **knobs)
    reference = sample(model, "dit", 5)
    eager.disable()

    counters.clear()
    with torch._dynamo.config.patch(error_on_recompile=True):
        handle = enable_cache(model, method, compile={"backend": "eager", "fullgraph": True}, **knobs)
        compiled = sample(model, "dit", 5)
        assert dict(counters["graph_break"]) == {}
        assert counters["stats"]["unique_graphs"] == 2
        torch.testing.assert_close(compiled, reference, rtol=1e-5, atol=1e-5)
        counters.clear()
        handle.new_run()
        sample(model, "dit", 5, seed=1)
        assert dict(counters["graph_break"]) == {} and counters["stats"]["unique_graphs"] == 0
    handle.disable()
    torch._dynamo.reset()
