"""Resuming from a checkpoint folder never runs code from it (issue 16, defect 1)."""

import os
import pickle

import torch

from fastsample.training.trainer import latest_checkpoint
from tests.training.test_train_cli import assert_same, load_checkpoint, run_train


class _WritesAFile:
    """A pickle payload: unpickling it calls ``open(target, "w")``, creating the file."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def _plant(path, target):
    with open(path, "wb") as handle:
        pickle.dump({"shadow_params": [_WritesAFile(target)], "decay": 0.5}, handle, protocol=2)


def test_a_pickle_payload_in_the_ema_file_does_not_run_on_resume(tmp_path, capsys):
    out, marker = tmp_path / "run", tmp_path / "payload-ran"
    assert run_train(out, 1) == 0
    checkpoint = latest_checkpoint(out)
    for name in os.listdir(checkpoint):  # the EMA file, whatever this version calls it
        if name.startswith("ema") or name.startswith("custom_checkpoint"):
            os.remove(checkpoint / name)
    _plant(checkpoint / "custom_checkpoint_0.pkl", marker)  # accelerate's name for a registered object
    capsys.readouterr()
    assert run_train(out, 2, "--resume", "latest") == 2
    assert not marker.exists(), "resume unpickled the payload (it ran)"
    assert "custom_checkpoint_0.pkl" in capsys.readouterr().err  # the refused file is named


def test_a_payload_in_any_other_file_of_the_folder_is_refused_by_name(tmp_path, capsys):
    out, marker = tmp_path / "run", tmp_path / "payload-ran"
    assert run_train(out, 1) == 0
    checkpoint = latest_checkpoint(out)
    _plant(checkpoint / "scheduler.bin", marker)
    capsys.readouterr()
    assert run_train(out, 2, "--resume", "latest") == 2
    assert not marker.exists()
    assert "scheduler.bin" in capsys.readouterr().err


def test_checkpoints_hold_no_pickled_ema_and_earlier_checkpoints_resume_bit_exactly(tmp_path):
    from fastsample.training.trainer import read_checkpoint_ema

    straight, legacy = tmp_path / "straight", tmp_path / "legacy"
    assert run_train(straight, 2) == 0
    assert run_train(legacy, 1) == 0
    checkpoint = latest_checkpoint(legacy)
    assert "ema.safetensors" in os.listdir(checkpoint)
    assert not [n for n in os.listdir(checkpoint) if n.startswith("custom_checkpoint")]
    # An earlier version's layout: the EMA state pickled (tensors only) as custom_checkpoint_0.pkl.
    state = read_checkpoint_ema(checkpoint)
    torch.save(state, checkpoint / "custom_checkpoint_0.pkl")
    os.remove(checkpoint / "ema.safetensors")
    assert run_train(legacy, 2, "--resume", "latest") == 0
    assert_same(load_checkpoint(straight / "checkpoint-2"), load_checkpoint(legacy / "checkpoint-2"))
