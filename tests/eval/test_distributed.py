"""A 2-process CPU run under `accelerate launch` (gloo) equals the 1-process run."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastsample.eval import compute_statistics, extract_features, load_statistics, pipeline_statistics

from ._helpers import StandInPipeline, random_images, tiny_extractor


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    if shutil.which("accelerate") is None and not (Path(sys.executable).parent / "accelerate").exists():
        pytest.skip("accelerate CLI not installed")
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(random_images(23, seed=4)):  # odd count: shards of 12 and 11
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    launcher = str(Path(sys.executable).parent / "accelerate")
    script = Path(__file__).with_name("_distributed_stats.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # `--cpu` alone runs one process (multi-CPU there means mpirun); `--multi_gpu` starts the processes with
    # torchrun, and `Accelerator(cpu=True)` in the script makes each a gloo CPU process (MULTI_CPU).
    command = [
        launcher,
        "launch",
        "--multi_gpu",
        "--main_process_port",
        "29533",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(script),
        str(folder),
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    extractor = tiny_extractor()
    single = compute_statistics(folder, extractor, batch_size=4, progress=False)
    double = load_statistics(tmp_path / "folder.npz")
    assert double.num_samples == single.num_samples == 23
    np.testing.assert_allclose(double.mu, single.mu, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(double.sigma, single.sigma, rtol=1e-10, atol=1e-12)

    generated_single = pipeline_statistics(
        StandInPipeline(), extractor, num_images=21, class_labels=[1, 4], batch_size=4, seed=5, progress=False
    )
    generated_double = load_statistics(tmp_path / "generated.npz")
    assert generated_double.num_samples == 21
    np.testing.assert_allclose(generated_double.sigma, generated_single.sigma, rtol=1e-10, atol=1e-12)

    gathered = np.load(tmp_path / "features.npy")
    local = extract_features(folder, extractor, progress=False).numpy()
    assert gathered.shape == local.shape
    # Rows come in process order: rank 0 has items 0, 2, 4, ..., rank 1 has 1, 3, ...
    np.testing.assert_allclose(gathered, np.concatenate([local[0::2], local[1::2]]), rtol=1e-6)
