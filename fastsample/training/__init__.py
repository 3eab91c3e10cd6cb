"""Training plugins: loss weights (Min-SNR-gamma, MixFlow) and timestep samplers for any training loop."""

from .objective import WEIGHTINGS, DiffusionObjective, ObjectiveBatch, mixflow_slowed_levels
from .samplers import SAMPLER_NAMES, sample_noise_levels, shift_noise_levels, to_vp_timesteps
from .trainer import TrainConfig, export_weights, train
from .weights import PREDICTION_TYPES, compute_snr, min_snr_weights

__all__ = [
    "PREDICTION_TYPES",
    "SAMPLER_NAMES",
    "WEIGHTINGS",
    "DiffusionObjective",
    "ObjectiveBatch",
    "TrainConfig",
    "compute_snr",
    "export_weights",
    "min_snr_weights",
    "mixflow_slowed_levels",
    "sample_noise_levels",
    "shift_noise_levels",
    "to_vp_timesteps",
    "train",
]
