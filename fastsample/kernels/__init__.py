"""Attention paths and fused kernels (torch SDPA backends, xformers, Triton) with pure-torch references."""
