"""Loading the flow-matching embedded model: ``load_default_pipeline(model="flow")`` and ``directory=``.

A tiny random-weight DiT is exported with the trainer's own ``export_weights(..., prediction_type="flow")``,
so the folder ``fastsample train --prediction-type flow --export DIR`` writes is what is loaded here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

from fastsample.pipelines.pixel_dit import PixelDiTPipeline
from fastsample.testing import tiny_pixel_dit_transformer
from fastsample.training.trainer import export_weights
from fastsample.zoo import default
from fastsample.zoo.data import CLASS_NAMES, NUM_CLASSES


def export_tiny(folder: Path, prediction_type: str = "flow") -> torch.nn.Module:
    transformer = tiny_pixel_dit_transformer(num_layers=1, num_classes=NUM_CLASSES)
    export_weights(transformer, folder, prediction_type=prediction_type)
    return transformer


@pytest.fixture
def flow_export(tmp_path):
    transformer = export_tiny(tmp_path / "export")
    return tmp_path / "export", transformer


def run(pipe: PixelDiTPipeline) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    out = pipe([0, 3], num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt")
    return out.images


def test_exported_flow_folder_loads_unchanged(flow_export):
    folder, transformer = flow_export
    pipe = default.load_default_pipeline(model="flow", directory=folder)
    assert isinstance(pipe, PixelDiTPipeline) and pipe.class_names == CLASS_NAMES
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    stored = json.loads((folder / default.SCHEDULER_CONFIG_FILE).read_text())
    assert pipe.scheduler.config.shift == stored["shift"]
    for name, param in pipe.transformer.state_dict().items():  # fp16 on disk, float32 in memory
        torch.testing.assert_close(param, transformer.state_dict()[name].half().float(), atol=0, rtol=0)
    manual = PixelDiTPipeline(default.load_dit(folder), FlowMatchEulerDiscreteScheduler.from_config(stored))
    torch.testing.assert_close(run(pipe), run(manual))


def test_shift_override(flow_export):
    folder, _ = flow_export
    pipe = default.load_default_pipeline(model="flow", directory=folder, shift=3.0)
    assert pipe.scheduler.config.shift == 3.0
    base = default.load_default_scheduler(model="flow", directory=folder)
    stored = json.loads((folder / default.SCHEDULER_CONFIG_FILE).read_text())
    direct = FlowMatchEulerDiscreteScheduler(
        **{k: v for k, v in stored.items() if not k.startswith("_")} | {"shift": 3.0}
    )
    for scheduler in (pipe.scheduler, base, direct):
        scheduler.set_timesteps(4)
    torch.testing.assert_close(pipe.scheduler.sigmas, direct.sigmas)
    # SD3's shift σ' = sσ / (1 + (s − 1)σ) with s = 3 > 1 spends the steps nearer to noise
    assert (pipe.scheduler.sigmas[1:-1] > base.sigmas[1:-1]).all()
    with pytest.raises(ValueError, match="shift"):
        default.load_default_pipeline(model="flow", directory=folder, shift=0.0)
    with pytest.raises(ValueError, match="shift"):
        default.load_default_scheduler(model="vp", shift=3.0)


def test_shipped_flow_layout_and_missing_files(tmp_path, monkeypatch):
    monkeypatch.setattr(default, "_weights_root", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match=r"weights/flow/dit_config\.json.*--prediction-type flow"):
        default.load_default_pipeline(model="flow")
    export_tiny(tmp_path / "flow")
    (tmp_path / "flow" / default.SCHEDULER_CONFIG_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"weights/flow/scheduler_config\.json"):
        default.load_default_pipeline(model="flow")
    export_tiny(tmp_path / "flow")
    pipe = default.load_default_pipeline(model="flow")
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert default.load_dit(model="flow").config.num_layers == 1
    assert torch.isfinite(run(pipe)).all()
    with pytest.raises(FileNotFoundError, match=r"weights/dit_config\.json"):
        default.load_default_pipeline(model="vp")  # the VP files are not in this folder


def test_model_and_folder_mismatches_are_refused(tmp_path):
    vp_folder = tmp_path / "vp"
    export_tiny(vp_folder, prediction_type="epsilon")
    with pytest.raises(ValueError, match="FlowMatch"):
        default.load_default_pipeline(model="flow", directory=vp_folder)
    pipe = default.load_default_pipeline(directory=vp_folder)  # model="vp"
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    with pytest.raises(ValueError, match="model must be one of"):
        default.load_default_pipeline(model="rectified")
    with pytest.raises(FileNotFoundError, match=r"missing.*fastsample train --export"):
        default.load_default_pipeline(model="flow", directory=tmp_path / "nowhere")
