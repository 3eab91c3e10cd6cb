"""Kernel tests run the Triton kernels on CPU tensors in Triton's interpreter: the variable must be set before
``fastsample.kernels.triton_ops`` is imported (``triton.jit`` reads it when the kernels are defined)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
