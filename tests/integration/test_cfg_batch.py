"""The adapter builds and splits the batched CFG input in each pipeline's own layout."""

import pytest
import torch

from fastsample.integration.adapters import ADAPTERS, get_adapter


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_stack_and_halves_are_inverse(name):
    adapter = ADAPTERS[name]
    cond, uncond = torch.full((2, 3), 1.0), torch.full((2, 3), 2.0)
    if adapter.cfg_layout == "separate_calls":
        with pytest.raises(ValueError, match="separate calls"):
            adapter.cfg_stack(cond, uncond)
        return
    batch = adapter.cfg_stack(cond, uncond)
    first = cond if adapter.cfg_layout == "cond_first" else uncond
    assert torch.equal(batch[:2], first)
    c, u = adapter.cfg_halves(batch)
    assert torch.equal(c, cond) and torch.equal(u, uncond)


def test_dit_order_is_the_pipelines_own():
    """diffusers' DiTPipeline feeds ``torch.cat([class_labels, class_null])``: the conditional rows first."""
    from diffusers import DiTPipeline

    labels, null = torch.tensor([3, 4]), torch.tensor([1000, 1000])
    assert get_adapter(DiTPipeline).cfg_stack(labels, null).tolist() == [3, 4, 1000, 1000]
