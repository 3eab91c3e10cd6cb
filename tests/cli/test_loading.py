"""The one pipeline loader: ``embedded``, ``fixture:NAME`` and a saved folder; mistakes named early."""

from __future__ import annotations

import pytest

from fastsample.cli.loading import load_pipeline


def test_fixture_spec():
    loaded = load_pipeline("fixture:dit", seed=3)
    assert (loaded.kind, loaded.fixture, loaded.spec) == ("fixture", "dit", "fixture:dit")
    assert type(loaded.pipe).__name__ == "DiTPipeline" and "seed 3" in loaded.description


def test_embedded_spec():
    from fastsample.pipelines.pixel_dit import PixelDiTPipeline

    loaded = load_pipeline("embedded")
    assert isinstance(loaded.pipe, PixelDiTPipeline) and loaded.kind == "embedded"
    assert "dit.safetensors sha256" in loaded.description


def test_saved_folders(tmp_path):
    from fastsample.testing import tiny_pipeline

    tiny_pipeline("dit").save_pretrained(tmp_path / "dit")
    loaded = load_pipeline(str(tmp_path / "dit"), dtype="float32")
    assert type(loaded.pipe).__name__ == "DiTPipeline" and loaded.kind == "path"
    assert "sha256" in loaded.description

    pixel = load_pipeline("embedded").pipe
    pixel.save_pretrained(tmp_path / "pixel")
    reloaded = load_pipeline(str(tmp_path / "pixel"))
    assert type(reloaded.pipe) is type(pixel)  # fastsample's own class, found from model_index.json


@pytest.mark.parametrize(
    "spec, error, match",
    [
        ("fixture:nope", ValueError, "unknown fixture 'nope'.*sd, sdxl, dit"),
        ("/nonexistent/folder", FileNotFoundError, "nothing is downloaded"),
        ("", ValueError, "'embedded', 'fixture:NAME' or a folder"),
        ("org/model-on-the-hub", FileNotFoundError, "org/model-on-the-hub"),
    ],
)
def test_bad_specs_are_refused_before_loading(spec, error, match):
    with pytest.raises(error, match=match):
        load_pipeline(spec)


def test_folder_without_model_index(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_pipeline(str(tmp_path))
