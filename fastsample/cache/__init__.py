"""Feature caching for diffusion transformers: hooks, static/dynamic/learned (HarmoniCa) reuse policies."""
