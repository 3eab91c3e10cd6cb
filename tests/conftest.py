"""Shared test configuration: markers, threads, determinism, and the offline guarantee."""

import os

import pytest
import torch

# Without a GPU the Triton kernels run on CPU tensors in Triton's interpreter. Set it here, before any test
# module is imported: importing diffusers' models already imports triton (torch alone does not).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Nothing in the test suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True, scope="session")
def _one_intra_op_thread():
    """The test models are tiny and latency-bound: with 2 intra-op threads on a busy 2-core machine a tiny DiT
    forward was measured 40x slower than with 1. Results do not depend on the thread count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
