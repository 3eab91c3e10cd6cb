"""A cache method missing a required knob says which one, and how to get it."""

import pytest

from fastsample.cache import enable_cache
from fastsample.testing import tiny_pipeline


def test_harmonica_without_a_router_names_the_router():
    pipe = tiny_pipeline("dit")
    with pytest.raises(TypeError, match="'harmonica' needs router .*fastsample train-router"):
        enable_cache(pipe, "harmonica")
