"""Run under `accelerate launch --num_processes 2 --cpu`: statistics of a folder and of generated images.

Writes `<out>/folder.npz`, `<out>/generated.npz` and `<out>/features.npy` from the main process; the test
compares them with a single-process run.
"""

import sys
from pathlib import Path

import numpy as np
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fastsample.eval import compute_statistics, extract_features, pipeline_statistics, save_statistics  # noqa: E402
from tests.eval._helpers import StandInPipeline, tiny_extractor  # noqa: E402


def main(folder: str, out: str) -> None:
    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == 2, accelerator.num_processes
    extractor = tiny_extractor()
    folder_stats = compute_statistics(
        folder, extractor, batch_size=4, accelerator=accelerator, progress=False
    )
    generated = pipeline_statistics(
        StandInPipeline(),
        extractor,
        num_images=21,
        class_labels=[1, 4],
        batch_size=4,
        seed=5,
        accelerator=accelerator,
        progress=False,
    )
    features = extract_features(folder, extractor, batch_size=4, accelerator=accelerator, progress=False)
    if accelerator.is_main_process:
        save_statistics(Path(out) / "folder.npz", folder_stats)
        save_statistics(Path(out) / "generated.npz", generated)
        np.save(Path(out) / "features.npy", features.numpy())
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
