"""Attention paths and fused kernels (torch SDPA backends, xformers, Triton), each with a pure-torch reference."""
