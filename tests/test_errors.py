"""Every artifact loader refuses a corrupt or foreign file with one error type that names it (issue 16,
defect 4).

The fuzz test feeds each loader truncated, bit-flipped, random and foreign versions of a valid file and
accepts only a correct load or :class:`fastsample.errors.ArtifactError` naming the file (or its folder).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from fastsample.cache.router import RouterArtifact
from fastsample.eval.inception import _read_state_dict, load_inception
from fastsample.eval.stats import Statistics, load_statistics, save_statistics
from fastsample.guidance.linear_ag import LinearAGCoefficients
from fastsample.training.trainer import (
    TrainConfig,
    build_model,
    export_weights,
    init_source,
    latest_checkpoint,
    load_checkpoint_ema,
)
from fastsample.zoo.default import load_dit
from fastsample.zoo.featurenet import FeatureNet, load_feature_net_file, save_feature_net
from tests.training.test_train_cli import run_train

TINY = {"width": 32, "head_dim": 16, "depth": 1, "patch_size": 8}


def _error_type():
    from fastsample.errors import ArtifactError  # imported here: the module is new (issue 16)

    return ArtifactError


# --------------------------------------------------------------------------------------------- the artifacts
def _router(folder: Path) -> None:
    RouterArtifact(
        logits=torch.randn(2, 3),
        model_class="DiTTransformer2DModel",
        model_config_hash="abc",
        unit_names=["a", "b", "c"],
        scheduler_class="DDIMScheduler",
        timesteps=[900.0, 400.0],
        guidance_scale=4.0,
    ).save_pretrained(folder)


def _linear_ag(folder: Path) -> None:
    LinearAGCoefficients(
        signature={"model": "m", "scheduler": "s", "num_steps": 4},
        coefficients={1: [0.5, 0.25, 0.125, 1.0], 2: [1.0, 0.0, 0.0, 0.0]},
        num_calibration_rows=8,
        residual_rms={1: 0.1},
    ).save_pretrained(folder)


def _feature_net(folder: Path) -> None:
    save_feature_net(FeatureNet((8, 8, 8, 8), feature_dim=8), folder / "net.safetensors")


def _export(folder: Path) -> None:
    export_weights(build_model(TrainConfig(**TINY)), folder)


def _statistics(folder: Path) -> None:
    stats = Statistics(np.arange(3.0), np.eye(3), num_samples=10, metadata={"extractor": "x"})
    save_statistics(folder / "stats.npz", stats)


def _inception_safetensors(folder: Path) -> None:
    save_file({"Conv2d_1a_3x3.conv.weight": torch.randn(4, 3, 3, 3)}, str(folder / "w.safetensors"))


def _inception_pth(folder: Path) -> None:
    torch.save({"state_dict": {"Conv2d_1a_3x3.conv.weight": torch.randn(4, 3, 3, 3)}}, folder / "w.pth")


_CHECKPOINT: dict[str, Path] = {}


def _checkpoint(folder: Path) -> None:
    """A checkpoint of a 1-step tiny run (made once, copied), inside its run folder (init_source needs the
    parent's train_config.json)."""
    if "run" not in _CHECKPOINT:
        run = Path(tempfile.mkdtemp(prefix="fastsample-fuzz-run-"))
        assert run_train(run / "out", 1) == 0
        _CHECKPOINT["run"] = run / "out"
    shutil.copytree(_CHECKPOINT["run"], folder / "out")


def _load_checkpoint(folder: Path) -> None:
    from fastsample.training.trainer import check_checkpoint_folder  # new (issue 16)

    checkpoint = latest_checkpoint(folder / "out")
    init_source(checkpoint)
    check_checkpoint_folder(checkpoint)
    load_checkpoint_ema(checkpoint, build_model(TrainConfig(**TINY)))


# (name, make(folder), the file to damage relative to folder, load(folder))
LOADERS = [
    ("router config", _router, "router_config.json", RouterArtifact.from_pretrained),
    ("router logits", _router, "router.safetensors", RouterArtifact.from_pretrained),
    ("linear_ag", _linear_ag, "linear_ag.json", LinearAGCoefficients.from_pretrained),
    ("feature net", _feature_net, "net.safetensors", lambda f: load_feature_net_file(f / "net.safetensors")),
    ("dit config", _export, "dit_config.json", load_dit),
    ("dit weights", _export, "dit.safetensors", load_dit),
    ("statistics", _statistics, "stats.npz", lambda f: load_statistics(f / "stats.npz")),
    (
        "inception st",
        _inception_safetensors,
        "w.safetensors",
        lambda f: _read_state_dict(f / "w.safetensors"),
    ),
    ("inception pth", _inception_pth, "w.pth", lambda f: _read_state_dict(f / "w.pth")),
    ("train config", _checkpoint, "out/train_config.json", _load_checkpoint),
    ("checkpoint model", _checkpoint, "out/checkpoint-1/model.safetensors", _load_checkpoint),
    ("checkpoint ema", _checkpoint, "out/checkpoint-1/ema.safetensors", _load_checkpoint),
    ("checkpoint optimizer", _checkpoint, "out/checkpoint-1/optimizer.bin", _load_checkpoint),
    ("checkpoint rng", _checkpoint, "out/checkpoint-1/random_states_0.pkl", _load_checkpoint),
    ("checkpoint state", _checkpoint, "out/checkpoint-1/trainer_state.json", _load_checkpoint),
]
FOREIGN = [
    b"",
    b"\x00" * 64,
    b'{"format": "something else"}',
    b"[1, 2, 3]",
    b"PK\x03\x04" + b"\x00" * 40,  # a zip signature and nothing valid after it
    b"\x80\x02}q\x00.",  # a pickled empty dict
    "é".encode("latin-1") * 10,  # not UTF-8
]


def _mutations():
    truncate = st.tuples(st.just("truncate"), st.floats(0.0, 1.0, exclude_max=True))
    flip = st.tuples(st.just("flip"), st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 7))
    noise = st.tuples(st.just("random"), st.binary(min_size=0, max_size=256))
    foreign = st.tuples(st.just("foreign"), st.sampled_from(FOREIGN))
    return st.one_of(truncate, flip, noise, foreign)


def _damage(data: bytes, mutation: tuple) -> bytes:
    kind = mutation[0]
    if kind == "truncate":
        return data[: int(mutation[1] * len(data))]
    if kind == "flip":
        position = int(mutation[1] * len(data))
        out = bytearray(data)
        out[position] ^= 1 << mutation[2]
        return bytes(out)
    return mutation[1]


def _check(name, make, relative, load, mutation):
    error_type = _error_type()
    folder = Path(tempfile.mkdtemp(prefix="fastsample-fuzz-"))
    try:
        make(folder)
        target = folder / relative
        target.write_bytes(_damage(target.read_bytes(), mutation))
        try:
            load(folder)
        except error_type as error:
            assert str(target) in str(error) or str(target.parent) in str(error), (name, str(error))
            assert error.path and error.expected and error.found
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("name, make, relative, load", LOADERS, ids=[row[0] for row in LOADERS])
@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(mutation=_mutations())
def test_damaged_files_raise_artifact_error_naming_them(name, make, relative, load, mutation):
    _check(name, make, relative, load, mutation)


@pytest.mark.parametrize("name, make, relative, load", LOADERS, ids=[row[0] for row in LOADERS])
def test_fixed_damage_of_every_kind(name, make, relative, load):
    """The damage the fuzzer might not draw: every foreign file, a truncation to half and to one byte."""
    for mutation in [("truncate", 0.5), ("truncate", 1e-9), *(("foreign", blob) for blob in FOREIGN)]:
        _check(name, make, relative, load, mutation)


# ------------------------------------------------------------------------------- the reported cases, exactly
def test_reported_cases_name_the_file(tmp_path):
    error_type = (
        ValueError  # before the fix these were SafetensorError, TypeError, KeyError, ... (not ValueError)
    )

    _router(tmp_path / "r")
    weights = tmp_path / "r" / "router.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(error_type, match="router.safetensors"):
        RouterArtifact.from_pretrained(tmp_path / "r")

    _router(tmp_path / "r2")
    config = tmp_path / "r2" / "router_config.json"
    config.write_text(config.read_text().replace('"guidance_scale"', '"other"'))
    with pytest.raises(error_type, match="router_config.json.*guidance_scale"):
        RouterArtifact.from_pretrained(tmp_path / "r2")

    for content, word in [(b'{"coefficients": {}}', "signature"), (b"\xff\xfe\x00", "UnicodeDecodeError")]:
        folder = tmp_path / f"ag-{word}"
        folder.mkdir()
        (folder / "linear_ag.json").write_bytes(content)
        with pytest.raises(error_type, match=f"linear_ag.json.*{word}"):
            LinearAGCoefficients.from_pretrained(folder)
    (folder / "linear_ag.json").write_bytes(b'{"signature": {')
    with pytest.raises(error_type, match="linear_ag.json"):
        LinearAGCoefficients.from_pretrained(folder)

    _statistics(tmp_path)
    stats = tmp_path / "stats.npz"
    stats.write_bytes(stats.read_bytes()[:100])
    with pytest.raises(error_type, match="stats.npz"):
        load_statistics(stats)
    stats.write_bytes(os.urandom(64).replace(b"PK", b"QK"))
    with pytest.raises(error_type, match="stats.npz") as caught:
        load_statistics(stats)
    assert "pickled objects" not in str(caught.value)  # random bytes are not called a pickle


def test_wrong_inception_layout_names_the_file(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(_error_type(), match="other.pth.*layout"):
        load_inception(path)


@pytest.fixture(scope="module", autouse=True)
def _remove_the_shared_run():
    yield
    if "run" in _CHECKPOINT:
        shutil.rmtree(_CHECKPOINT.pop("run").parent, ignore_errors=True)
