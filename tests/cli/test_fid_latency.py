"""`fastsample fid` and `fastsample latency` through the command line's entry point."""

import json

import numpy as np
import pytest
from PIL import Image

import fastsample.eval.extractors as extractors
from fastsample.cli import main
from fastsample.eval import frechet_distance, load_statistics
from tests.eval._helpers import random_images, tiny_extractor


def _run(argv):
    return main(argv)


def _folder(path, seed):
    path.mkdir()
    for i, image in enumerate(random_images(20, seed=seed)):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path / f"{i}.png")
    return path


def test_fid_between_npz_files(tmp_path, capsys):
    np.savez_compressed(tmp_path / "a.npz", mu=np.zeros(3), sigma=np.eye(3))
    np.savez_compressed(tmp_path / "b.npz", mu=np.ones(3), sigma=4 * np.eye(3))
    assert (
        _run(["fid", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--out", str(tmp_path / "r.json")])
        == 0
    )
    expected = frechet_distance(np.zeros(3), np.eye(3), np.ones(3), 4 * np.eye(3))  # 3 + 3·(2 − 1)² = 6
    assert f"FID: {expected:.6f}" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["fid"] == pytest.approx(6.0)


def test_fid_save_stats_then_compare(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(extractors, "get_extractor", lambda *args, **kwargs: tiny_extractor())
    a, b = _folder(tmp_path / "a", 1), _folder(tmp_path / "b", 2)
    assert _run(["fid", "--save-stats", str(a), str(tmp_path / "a.npz")]) == 0
    assert load_statistics(tmp_path / "a.npz").num_samples == 20
    assert _run(["fid", str(a), str(tmp_path / "a.npz")]) == 0
    assert "FID: 0.000000" in capsys.readouterr().out
    assert _run(["fid", str(a), str(b)]) == 0
    assert float(capsys.readouterr().out.split("FID:")[1]) > 0


def test_fid_errors_are_reported(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FASTSAMPLE_INCEPTION_WEIGHTS", raising=False)
    a = _folder(tmp_path / "a", 1)
    assert _run(["fid", str(a), str(a), "--weights", str(tmp_path / "missing.pth")]) == 2
    assert "pt_inception-2015-12-05-6726825d.pth" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(extractors, "get_extractor", lambda *args, **kwargs: tiny_extractor())
    assert _run(["fid", str(tmp_path / "empty"), str(a)]) == 2
    assert "No image files" in capsys.readouterr().err


def test_latency_command_on_tiny_dit(tmp_path, capsys):
    pytest.importorskip("fastsample.testing")
    out = tmp_path / "report"
    argv = [
        "latency",
        "--pipeline",
        "fixture:dit",
        "--steps",
        "2",
        "--compare-steps",
        "1",
        "--scopes",
        "end_to_end",
        "--warmup",
        "0",
        "--repeats",
        "10",
        "--out",
        str(out),
    ]
    assert _run(argv) == 0
    printed = capsys.readouterr().out
    assert "scope=end_to_end" in printed and "speedup=" in printed and "MACs per call" in printed
    # versions, machine and peak RSS on CPU (not a peak memory of 0)
    assert "versions: python" in printed and "diffusers" in printed and "machine: " in printed
    assert "peak RSS of the process:" in printed and "peak_memory_MiB=0" not in printed
    raw = json.loads((out / "latency_raw.json").read_text())
    assert raw["nfe_per_call"] == 2 and raw["comparison"]["speedup"] > 0
    assert (out / "latency.md").is_file() and (out / "latency.json").is_file()


def test_latency_command_on_a_saved_pipeline_folder(tmp_path, capsys):
    testing = pytest.importorskip("fastsample.testing")
    testing.tiny_pipeline("dit").save_pretrained(tmp_path / "dit")
    argv = [
        "latency",
        "--pipeline",
        str(tmp_path / "dit"),
        "--steps",
        "1",
        "--scopes",
        "model_step",
        "end_to_end",
        "--warmup",
        "0",
        "--no-macs",
    ]
    assert _run(argv) == 0
    printed = capsys.readouterr().out
    assert "scope=model_step" in printed and "nfe=1" in printed
    assert _run(["latency", "--pipeline", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "argument --pipeline" in err and "missing" in err and "Traceback" not in err
