"""Embedded defaults: the exact Gaussian-mixture oracle, the procedural dataset, the shipped models."""
