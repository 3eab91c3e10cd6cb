"""Expected mistakes: an argparse-style message naming the argument, exit status 2, no traceback, and no
work done before the check; ``--debug`` shows the traceback."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

import fastsample.eval.extractors as extractors
from fastsample.cli import main
from fastsample.cli._common import CommandError


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"fastsample {argv[0]}: error: " in err and "usage:" in err
    return err


def _images(folder, n=4, size=32):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture
def no_extractor(monkeypatch):
    """Fail the test if any extractor is built (the check must come before any work)."""

    def refuse(*args, **kwargs):
        raise AssertionError("an extractor was built before the arguments were checked")

    monkeypatch.setattr(extractors, "get_extractor", refuse)


def test_fid_corrupt_weights_names_the_file(tmp_path, capsys):
    a = _images(tmp_path / "a")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file at all")
    err = _error(capsys, ["fid", str(a), str(a), "--weights", str(corrupt)])
    assert "argument --weights" in err and "corrupt.safetensors" in err


def test_fid_missing_weights_names_the_file(tmp_path, capsys, no_extractor):
    a = _images(tmp_path / "a")
    for extractor in ("inception", "in-domain"):
        err = _error(
            capsys, ["fid", str(a), str(a), "--extractor", extractor, "--weights", "/nonexistent.pth"]
        )
        assert "argument --weights" in err and "/nonexistent.pth" in err and "does not exist" in err


def test_fid_in_domain_honours_weights(tmp_path, capsys):
    from fastsample.eval import load_statistics
    from fastsample.zoo.featurenet import FeatureNet, save_feature_net

    a = _images(tmp_path / "a")
    torch.manual_seed(0)
    save_feature_net(FeatureNet(channels=(8, 8, 8, 8), feature_dim=16), tmp_path / "small.safetensors")
    argv = ["fid", str(a), str(tmp_path / "a.npz"), "--save-stats", "--extractor", "in-domain", "--quiet"]
    assert main([*argv, "--weights", str(tmp_path / "small.safetensors")]) == 0
    assert load_statistics(tmp_path / "a.npz").feature_dim == 16  # the given net, not the shipped 128-d one


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a build or machine without CUDA")
def test_fid_cuda_on_a_cpu_build(tmp_path, capsys, no_extractor):
    a = _images(tmp_path / "a")
    err = _error(capsys, ["fid", str(a), str(a), "--device", "cuda"])
    assert "argument --device" in err and "CUDA is not available" in err


def test_fid_checks_both_paths_before_any_work(tmp_path, capsys, no_extractor):
    a = _images(tmp_path / "a")
    err = _error(capsys, ["fid", str(a), "/nonexistent"])
    assert "argument b" in err and "/nonexistent" in err
    err = _error(capsys, ["fid", "/nonexistent", str(a)])
    assert "argument a" in err
    err = _error(capsys, ["fid", str(a), str(tmp_path / "missing.npz")])
    assert "argument b" in err and "missing.npz" in err


def test_fid_names_the_in_domain_metric(tmp_path, capsys):
    np.savez_compressed(tmp_path / "a.npz", mu=np.zeros(3), sigma=np.eye(3))
    np.savez_compressed(tmp_path / "b.npz", mu=np.ones(3), sigma=np.eye(3))
    files = [str(tmp_path / "a.npz"), str(tmp_path / "b.npz")]
    assert main(["fid", *files, "--extractor", "in-domain"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("FD (in-domain): 3.000000") and "FID" not in out
    assert main(["fid", *files]) == 0
    assert capsys.readouterr().out.startswith("FID: 3.000000")


def test_solver_table_samples_zero(capsys):
    with pytest.raises(SystemExit) as error:
        main(["solver-table", "--samples", "0"])
    assert error.value.code == 2
    err = capsys.readouterr().err
    assert "argument --samples: expected an integer >= 1, got 0" in err and "Traceback" not in err


def test_train_router_text_fixture_without_transformers(monkeypatch, capsys):
    import diffusers

    diffusers.StableDiffusionPipeline  # noqa: B018 - imported first: diffusers caches what is installed
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` raises ImportError
    err = _error(capsys, ["train-router", "--pipeline", "fixture:sd", "--out", "unused", "--quiet"])
    assert "argument --pipeline" in err and "fixture:sd" in err and "transformers" in err


def test_train_router_refuses_a_text_pipeline(capsys):
    pytest.importorskip("transformers")
    err = _error(
        capsys, ["train-router", "fixture:sd", "--out", "unused", "--quiet"]
    )  # deprecated positional
    assert "argument --pipeline" in err and "class-conditional" in err


def test_train_resume_latest_on_an_empty_folder_is_refused(tmp_path, capsys):
    err = _error(capsys, ["train", "--out", str(tmp_path / "run"), "--resume", "latest", "--quiet"])
    assert "argument --resume" in err and "no checkpoint" in err
    assert not (tmp_path / "run").exists()  # nothing started


def test_unknown_pipeline_spec(capsys):
    err = _error(capsys, ["latency", "--pipeline", "fixture:nope"])
    assert "argument --pipeline" in err and "unknown fixture 'nope'" in err
    err = _error(capsys, ["latency", "--pipeline", "/nonexistent/pipe"])
    assert "argument --pipeline" in err and "/nonexistent/pipe" in err


def test_debug_and_verbose_show_the_traceback(tmp_path):
    a = _images(tmp_path / "a")
    for flag in ("--debug", "-v"):
        with pytest.raises(CommandError, match="argument b"):
            main(["fid", str(a), "/nonexistent", flag])
