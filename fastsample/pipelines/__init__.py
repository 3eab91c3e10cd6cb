"""Pipelines fastsample defines itself: the pixel-space DiT pipeline."""
