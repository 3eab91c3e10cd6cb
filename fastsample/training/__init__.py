"""Training plugins: loss weights (Min-SNR-gamma, MixFlow) and timestep samplers for any training loop."""
