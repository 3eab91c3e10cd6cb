"""Evaluation: Frechet distance / FID, feature extractors, image metrics, latency timing and reports."""
