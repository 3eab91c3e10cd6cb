"""Classifier-free guidance variants (pure tensor math) and the hook that applies them to a pipeline."""
