"""Messages that name what was wrong: a threshold given as a string is a type error, not a range error."""

import pytest

from fastsample.guidance import AdaptiveGuidance


def test_threshold_of_the_wrong_type_says_so():
    with pytest.raises(TypeError, match="must be a number in \\(0, 1\\], got str '0.99'"):
        AdaptiveGuidance(threshold="0.99")
    with pytest.raises(TypeError, match="got bool"):
        AdaptiveGuidance(threshold=True)
    with pytest.raises(ValueError, match="must be in \\(0, 1\\], got 1.5"):
        AdaptiveGuidance(threshold=1.5)
