"""fastsample: faster and better sampling for HuggingFace diffusers pipelines, and the measurements to prove it.

Capabilities live in one subpackage each (``solvers``, ``guidance``, ``cache``, ``kernels``, ``training``,
``eval``, ``pipelines``, ``zoo``); the public names are re-exported here.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
