"""Reports: a markdown table, the same rows as JSON, a quality-vs-latency plot with its Pareto front, and
image grids.

A row is a flat dict, e.g. ``{"method": "ghvb-2.5", "nfe": 20, "latency_s": 1.2, "fid": 4.1}``. The Pareto
front holds the rows that no other row beats on both axes (lower latency and better quality).
matplotlib is imported only when a plot is written (the ``bench`` extra: ``pip install fastsample[bench]``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["pareto_front", "save_image_grid", "write_report"]


def pareto_front(
    latencies: Sequence[float], qualities: Sequence[float], lower_is_better: bool = True
) -> list[int]:
    """Indices of the non-dominated points, sorted by latency.

    A point is dominated when another is at least as good on both axes and strictly better on one
    (latency: lower is better; quality: lower is better for FID, higher for accuracy or CLIP score).
    """
    if len(latencies) != len(qualities):
        raise ValueError("`latencies` and `qualities` must have the same length.")
    sign = 1.0 if lower_is_better else -1.0
    points = [(float(t), sign * float(q)) for t, q in zip(latencies, qualities)]
    front = []
    for i, (t_i, q_i) in enumerate(points):
        dominated = any(
            t_j <= t_i and q_j <= q_i and (t_j < t_i or q_j < q_i)
            for j, (t_j, q_j) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], points[i][1]))


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_format(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _require_matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            "Writing plots needs matplotlib: install the `bench` extra (pip install 'fastsample[bench]')."
        ) from error
    return plt


def _plot(
    rows, path: Path, quality_key: str, latency_key: str, label_key: str, lower_is_better: bool
) -> None:
    plt = _require_matplotlib()
    latencies = [float(row[latency_key]) for row in rows]
    qualities = [float(row[quality_key]) for row in rows]
    front = pareto_front(latencies, qualities, lower_is_better)
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.scatter(latencies, qualities, color="tab:blue", zorder=2)
    for row, t, q in zip(rows, latencies, qualities):
        axes.annotate(
            str(row.get(label_key, "")), (t, q), textcoords="offset points", xytext=(4, 4), fontsize=8
        )
    axes.plot(
        [latencies[i] for i in front],
        [qualities[i] for i in front],
        color="tab:red",
        drawstyle="steps-post",
        label="Pareto front",
        zorder=1,
    )
    axes.set_xlabel(latency_key)
    axes.set_ylabel(f"{quality_key} ({'lower' if lower_is_better else 'higher'} is better)")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(
    out_dir: str | os.PathLike,
    rows: list[dict[str, Any]],
    title: str = "fastsample evaluation",
    quality_key: str | None = "fid",
    latency_key: str = "latency_s",
    label_key: str = "method",
    lower_is_better: bool = True,
    setup: dict[str, Any] | None = None,
    name: str = "report",
) -> dict[str, Path]:
    """Write ``<name>.md``, ``<name>.json`` and (when rows have ``quality_key``) ``<name>_pareto.png``.

    ``setup`` (machine, versions, command, settings) is written above the table and into the JSON. Returns
    the paths written, keyed ``"markdown"``, ``"json"`` and ``"plot"``.
    """
    if not rows or not all(isinstance(row, dict) for row in rows):
        raise ValueError("`rows` must be a non-empty list of dicts.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    setup = dict(setup or {})
    has_plot = quality_key is not None and all(quality_key in row and latency_key in row for row in rows)
    front_labels: list[str] = []
    if has_plot:
        front = pareto_front(
            [row[latency_key] for row in rows], [row[quality_key] for row in rows], lower_is_better
        )
        front_labels = [str(rows[i].get(label_key, i)) for i in front]
    lines = [f"# {title}", ""]
    lines += [f"- **{key}**: {value}" for key, value in setup.items()]
    lines += ["", _markdown_table(rows), ""]
    if has_plot:
        lines += [
            f"Pareto front ({latency_key} vs {quality_key}): {', '.join(front_labels)}",
            "",
            f"![{quality_key} vs {latency_key}]({name}_pareto.png)",
            "",
        ]
    paths["markdown"] = out / f"{name}.md"
    paths["markdown"].write_text("\n".join(lines))
    paths["json"] = out / f"{name}.json"
    paths["json"].write_text(
        json.dumps(
            {"title": title, "setup": setup, "rows": rows, "pareto_front": front_labels},
            indent=2,
            default=str,
        )
    )
    if has_plot:
        paths["plot"] = out / f"{name}_pareto.png"
        _plot(rows, paths["plot"], quality_key, latency_key, label_key, lower_is_better)
    return paths


def save_image_grid(
    images, path: str | os.PathLike, num_columns: int | None = None, padding: int = 2
) -> Path:
    """Save images (canonical ``[N, 3, H, W]`` tensor or ``[N, H, W, 3]`` array) as one PNG grid (PIL)."""
    from PIL import Image

    from fastsample.eval.preprocess import to_canonical_images

    batch = to_canonical_images(images, quantize=True)
    count, _, height, width = batch.shape
    if count == 0:
        raise ValueError("`images` is empty.")
    columns = num_columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = np.full(
        (rows * (height + padding) + padding, columns * (width + padding) + padding, 3), 255, np.uint8
    )
    array = batch.permute(0, 2, 3, 1).cpu().numpy()
    for index in range(count):
        r, c = divmod(index, columns)
        top, left = padding + r * (height + padding), padding + c * (width + padding)
        grid[top : top + height, left : left + width] = array[index]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path
