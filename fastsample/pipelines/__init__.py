"""Integration glue: the per-pipeline adapter table, `optimize(pipe, ...)`, the pixel-space DiT pipeline, and
the command line's one pipeline loader (`loading.load_pipeline`: embedded, fixture:NAME or a folder)."""
