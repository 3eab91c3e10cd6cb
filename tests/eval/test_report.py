"""Report writer: Pareto front, markdown + JSON + PNG, image grids."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fastsample.eval import pareto_front, save_image_grid, write_report


def test_pareto_front_by_hand():
    latencies = [1.0, 2.0, 3.0, 4.0, 2.5]
    fids = [5.0, 3.0, 4.0, 1.0, 3.0]
    # (2.5, 3) is dominated by (2, 3); (3, 4) by (2, 3).
    assert pareto_front(latencies, fids) == [0, 1, 3]
    accuracies = [0.5, 0.7, 0.6, 0.9, 0.7]  # higher is better
    assert pareto_front(latencies, accuracies, lower_is_better=False) == [0, 1, 3]
    assert pareto_front([1.0, 1.0], [2.0, 2.0]) == [0, 1]  # ties dominate nothing
    with pytest.raises(ValueError):
        pareto_front([1.0], [1.0, 2.0])


ROWS = [
    {"method": "ddim-50", "nfe": 50, "latency_s": 2.0, "fid": 3.1},
    {"method": "ddim-10", "nfe": 10, "latency_s": 0.4, "fid": 9.0},
    {"method": "ghvb-10", "nfe": 10, "latency_s": 0.42, "fid": 5.2},
    {"method": "bad", "nfe": 20, "latency_s": 0.9, "fid": 9.5},
]


def test_write_report_produces_all_files(tmp_path):
    paths = write_report(
        tmp_path / "out", ROWS, title="solvers", setup={"machine": "test", "command": "pytest"}
    )
    assert set(paths) == {"markdown", "json", "plot"}
    markdown = paths["markdown"].read_text()
    assert "| method | nfe | latency_s | fid |" in markdown and "| ghvb-10 | 10 | 0.42 | 5.2 |" in markdown
    assert "Pareto front (latency_s vs fid): ddim-10, ghvb-10, ddim-50" in markdown
    assert "**machine**: test" in markdown
    data = json.loads(paths["json"].read_text())
    assert data["rows"] == ROWS and data["pareto_front"] == ["ddim-10", "ghvb-10", "ddim-50"]
    with Image.open(paths["plot"]) as image:
        assert image.format == "PNG" and image.size[0] > 100


def test_report_without_quality_has_no_plot(tmp_path):
    paths = write_report(
        tmp_path, [{"scope": "end_to_end", "median_s": 0.1}], quality_key=None, name="latency"
    )
    assert set(paths) == {"markdown", "json"} and paths["markdown"].name == "latency.md"
    with pytest.raises(ValueError):
        write_report(tmp_path, [])


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"fastsample\[bench\]"):
        write_report(tmp_path, ROWS)


def test_image_grid_layout(tmp_path):
    images = torch.zeros(5, 3, 4, 6, dtype=torch.uint8)
    for i in range(5):
        images[i] = 40 * (i + 1)
    path = save_image_grid(images, tmp_path / "grid.png", num_columns=3, padding=1)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (2 * 5 + 1, 3 * 7 + 1, 3)
    assert (grid[1:5, 1:7] == 40).all() and (grid[6:10, 8:14] == 200).all()  # image 0 and image 4
    assert (grid[6:10, 15:21] == 255).all()  # the empty sixth cell stays white
    float_grid = save_image_grid(np.full((2, 4, 4, 3), 0.5, np.float32), tmp_path / "float.png")
    assert np.asarray(Image.open(float_grid))[2, 2, 0] == 128  # inside the first image (padding 2)
