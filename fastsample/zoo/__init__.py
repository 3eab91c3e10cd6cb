"""Embedded defaults: the exact Gaussian-mixture oracle, the procedural image dataset and the shipped models."""
