"""Integration glue: the per-pipeline adapter table, ``optimize(pipe, ...)`` and the pixel-space DiT pipeline."""
