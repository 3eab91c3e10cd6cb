"""``python -m fastsample.cli`` (and ``accelerate launch -m fastsample.cli ...``): ``fastsample``."""

import sys

from fastsample.cli import main

sys.exit(main())
