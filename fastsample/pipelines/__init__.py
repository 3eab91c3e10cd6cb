"""Integration glue: the per-pipeline adapter table, `optimize(pipe, ...)`, the pixel-space DiT pipeline."""
