"""Trainer of the embedded class-conditional pixel-space DiT on the procedural zoo data.

Used by ``fastsample train``.

Model: diffusers ``DiTTransformer2DModel`` on 32×32 RGB pixels (``in_channels = out_channels = 3``,
``num_embeds_ada_norm = 10``: labels 0–9, the null label for classifier-free guidance is 10). Noise schedule:
DDPM linear betas 1e-4…0.02 over 1000 steps (ᾱ_999 ≈ 4e-5, no near-zero ᾱ), ε-prediction. The objective is
:class:`~fastsample.training.objective.DiffusionObjective` (weighting and timestep sampler selectable).

Label dropout is done once per sample, to the null class, here; the per-block label-embedding dropout that
``DiTTransformer2DModel`` applies independently in every block is set to 0 (otherwise each block drops labels
independently and classifier-free guidance is trained wrongly).

Optimiser AdamW with linear warm-up then a constant LR, gradient clipping, EMA (diffusers ``EMAModel`` with
warm-up), optional bf16 autocast, ``accelerate`` for several processes. All randomness of step ``k`` on
process ``p`` comes from generators seeded by ``(seed, k, p)``, and a checkpoint stores the model, EMA,
optimizer, LR scheduler and RNG states, so resuming from a checkpoint is bit-exact.

A checkpoint folder ``checkpoint-N`` may contain only these files (:data:`CHECKPOINT_FILES`):
``model.safetensors``; ``ema.safetensors`` (the EMA's shadow parameters as tensors and its counters as JSON
metadata, written and read by fastsample, never by accelerate); ``optimizer.bin``, ``scheduler.bin`` and
``random_states_<process>.pkl`` (written by accelerate's ``save_state``, read with
``torch.load(weights_only=True)``); ``trainer_state.json``. Checkpoints of earlier versions keep the EMA in
``custom_checkpoint_0.pkl`` (accelerate's file for a registered object, which its ``load_state`` would
unpickle with ``weights_only=False``); fastsample reads it with ``weights_only=True`` and hides it from
accelerate. Before resuming, every file of the folder is checked (JSON parsed, safetensors headers read,
every other file loaded with ``weights_only=True``): one that would need arbitrary unpickling (it could run
code) is refused with an :class:`~fastsample.errors.ArtifactError` naming it, before anything is loaded.

Export (:func:`export_weights`) writes the EMA weights as fp16 safetensors + the model config + a
``DPMSolverMultistepScheduler`` config with the same betas (``FlowMatchEulerDiscreteScheduler`` for
``"flow"``), to sample with.

Post-training (``init_from``, ``fastsample train --init-from PATH``): a new run (step 0, fresh optimizer,
LR warm-up and EMA warm-up) whose transformer *and* EMA start from the weights in ``PATH``: a checkpoint
folder of this trainer (its EMA weights, float32) or an exported folder (``dit.safetensors``, fp16 upcast to
float32). The architecture (width, head_dim, depth, patch_size) must match the source's; the command line
takes it from ``PATH`` when those flags are not given (see :func:`init_source`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pickle
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import (
    ArtifactError,
    read_json,
    read_safetensors,
    read_safetensors_metadata,
    read_torch_tensors,
    reading,
    require_fields,
)
from ..zoo.data import IMAGE_SIZE, NUM_CLASSES, generate_batch
from ..zoo.default import DIT_CONFIG_FILE, DIT_WEIGHTS_FILE, SCHEDULER_CONFIG_FILE
from .objective import DiffusionObjective

__all__ = [
    "CHECKPOINT_FILES",
    "TRAIN_PREDICTION_TYPES",
    "TrainConfig",
    "build_model",
    "build_noise_scheduler",
    "check_checkpoint_folder",
    "export_weights",
    "init_source",
    "latest_checkpoint",
    "load_checkpoint_ema",
    "load_init_weights",
    "read_checkpoint_ema",
    "sampling_scheduler_config",
    "save_ema_state",
    "train",
]

logger = logging.getLogger(__name__)

WEIGHT_FILE = DIT_WEIGHTS_FILE  # the shipped layout, owned by fastsample.zoo.default
CONFIG_FILE = DIT_CONFIG_FILE
SCHEDULER_FILE = SCHEDULER_CONFIG_FILE
_STATE_FILE = "trainer_state.json"
TRAIN_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow")
ARCHITECTURE_FIELDS = ("width", "head_dim", "depth", "patch_size")
_EMA_FILE = "ema.safetensors"  # the EMA, written and read by fastsample (never unpickled)
_LEGACY_EMA_FILE = "custom_checkpoint_0.pkl"  # earlier versions: accelerate's file of the registered EMA
_MODEL_FILE = "model.safetensors"
#: What a checkpoint folder may contain, and how each file is read on resume.
CHECKPOINT_FILES = {
    _MODEL_FILE: "model weights (safetensors, read by accelerate)",
    _EMA_FILE: "EMA shadow parameters and counters (safetensors, read by fastsample)",
    "optimizer.bin": "AdamW state (torch file, read by accelerate with weights_only=True)",
    "scheduler.bin": "LR scheduler state (torch file, read by accelerate with weights_only=True)",
    "random_states_<p>.pkl": "RNG states of process p (torch file, accelerate, weights_only=True)",
    _STATE_FILE: "step and loss (JSON)",
    _LEGACY_EMA_FILE: "earlier versions' EMA (torch file, read by fastsample with weights_only=True)",
}
_EMA_STATE_KEY = "fastsample_ema_state"


@dataclass
class TrainConfig:
    """Hyper-parameters of ``fastsample train`` (defaults: the shipped model)."""

    output_dir: str = "zoo_runs/dit"
    steps: int = 20_000
    batch_size: int = 64  # per process
    lr: float = 7e-4
    warmup_steps: int = 300
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_power: float = 2 / 3
    label_dropout: float = 0.1
    weighting: str = "min_snr"
    gamma: float = 5.0
    sampler: str = "uniform"
    sampler_kwargs: dict[str, float] = field(default_factory=dict)
    prediction_type: str = "epsilon"  # or "flow": rectified flow, FlowMatchEulerDiscreteScheduler (shift 1)
    mixflow_gamma: float | None = (
        None  # MixFlow (the paper's recipe on flow; experimental on the VP schedule)
    )
    width: int = 128  # num_attention_heads × attention_head_dim
    head_dim: int = 32
    depth: int = 6
    patch_size: int = 4
    seed: int = 0
    mixed_precision: str = "no"  # "no" or "bf16"
    compile: bool = False  # torch.compile the training forward (GPU; the stored weights are unchanged)
    checkpoint_every_steps: int = 0  # 0 = by time only
    checkpoint_every_minutes: float = 8.0
    keep_checkpoints: int = 2
    export_dir: str | None = None  # also export EMA weights here at every checkpoint
    num_threads: int | None = None
    log_every: int = 50
    progress: bool = True
    init_from: str | None = None  # post-training: start from these weights (see init_source)

    def validate(self) -> None:
        positive = ("steps", "batch_size", "width", "head_dim", "depth", "patch_size")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.width % self.head_dim:
            raise ValueError(f"width ({self.width}) must be a multiple of head_dim ({self.head_dim})")
        if IMAGE_SIZE % self.patch_size:
            raise ValueError(f"patch_size must divide {IMAGE_SIZE}, got {self.patch_size}")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout must lie in [0, 1), got {self.label_dropout}")
        if not self.lr > 0 or self.warmup_steps < 0:
            raise ValueError("lr must be > 0 and warmup_steps >= 0")
        if self.prediction_type not in TRAIN_PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type must be one of {TRAIN_PREDICTION_TYPES}, got {self.prediction_type!r}"
            )
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be a bool, got {self.compile!r}")
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}")
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in (0, 1), got {self.ema_decay}")


def init_source(path: str | os.PathLike) -> dict[str, Any]:
    """Describe a ``--init-from`` source without loading weights: ``{"path", "kind", "architecture",
    "prediction_type"}``.

    ``kind`` is ``"checkpoint"`` (a ``checkpoint-N`` folder of :func:`train`, with ``train_config.json`` in
    its parent) or ``"export"`` (``dit_config.json`` + ``dit.safetensors``, as :func:`export_weights` writes).
    ``architecture`` maps :data:`ARCHITECTURE_FIELDS` to the source's values; ``prediction_type`` is the
    source's training target (``None`` when an export's scheduler config does not say).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"init_from: {path} does not exist or is not a folder")
    if (path / _STATE_FILE).exists():
        config_file = path.parent / "train_config.json"
        if not config_file.exists():
            raise FileNotFoundError(
                f"init_from: checkpoint {path} has no {config_file.name} in its parent folder "
                "(keep a checkpoint inside the output folder of its run)"
            )
        missing = [name for name in (_MODEL_FILE,) if not (path / name).exists()]
        if not (path / _EMA_FILE).exists() and not (path / _LEGACY_EMA_FILE).exists():
            missing.append(_EMA_FILE)
        if missing:
            raise FileNotFoundError(f"init_from: checkpoint {path} lacks {', '.join(missing)}")
        fields = read_json(config_file, "the train_config.json of a fastsample train run")
        architecture = {name: fields.get(name, getattr(TrainConfig, name)) for name in ARCHITECTURE_FIELDS}
        prediction_type = fields.get("prediction_type", "epsilon")
        kind = "checkpoint"
    elif (path / CONFIG_FILE).exists() and (path / WEIGHT_FILE).exists():
        expected = "a DiTTransformer2DModel config (JSON)"
        model_config = read_json(path / CONFIG_FILE, expected)
        fields = ("num_attention_heads", "attention_head_dim", "num_layers", "patch_size")
        require_fields(path / CONFIG_FILE, model_config, fields, expected)
        with reading(path / CONFIG_FILE, expected):
            heads, head_dim = (
                int(model_config["num_attention_heads"]),
                int(model_config["attention_head_dim"]),
            )
            architecture = {
                "width": heads * head_dim,
                "head_dim": head_dim,
                "depth": int(model_config["num_layers"]),
                "patch_size": int(model_config["patch_size"]),
            }
        prediction_type = None
        if (path / SCHEDULER_FILE).exists():
            scheduler_config = read_json(path / SCHEDULER_FILE, "a diffusers scheduler config (JSON)")
            if scheduler_config.get("_class_name") == "FlowMatchEulerDiscreteScheduler":
                prediction_type = "flow"
            else:
                prediction_type = scheduler_config.get("prediction_type")
        kind = "export"
    else:
        raise FileNotFoundError(
            f"init_from: {path} is neither a checkpoint folder of `fastsample train` (no {_STATE_FILE}) "
            f"nor an exported model folder (needs {CONFIG_FILE} and {WEIGHT_FILE})"
        )
    return {"path": str(path), "kind": kind, "architecture": architecture, "prediction_type": prediction_type}


def save_ema_state(ema: Any, model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Write a diffusers ``EMAModel``'s state as safetensors: shadow parameter ``i`` under the name of the
    ``i``-th parameter of ``model``, the counters (decay, optimization step, warm-up settings) as JSON
    metadata. Replaced atomically."""
    from safetensors.torch import save

    state = ema.state_dict()
    shadow = state.pop("shadow_params")
    names = [name for name, _ in model.named_parameters()]
    if len(names) != len(shadow):
        raise ValueError(f"the EMA holds {len(shadow)} tensors for a model with {len(names)} parameters")
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in zip(names, shadow, strict=True)}
    metadata = {_EMA_STATE_KEY: json.dumps(state), "order": json.dumps(names)}
    _atomic_write_bytes(Path(path), save(tensors, metadata=metadata))


def read_checkpoint_ema(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The EMA state of a :func:`train` checkpoint folder, as ``EMAModel.state_dict()`` returns it
    (``shadow_params`` in the model's parameter order). Reads ``ema.safetensors``, or an earlier version's
    ``custom_checkpoint_0.pkl`` with ``torch.load(weights_only=True)``; never unpickles anything else.
    Raises :class:`~fastsample.errors.ArtifactError` naming the file when it is corrupt or foreign."""
    checkpoint = Path(checkpoint)
    path = checkpoint / _EMA_FILE
    expected = "the EMA of a fastsample train checkpoint"
    if path.exists():
        metadata = read_safetensors_metadata(path, expected)
        require_fields(path, metadata, (_EMA_STATE_KEY, "order"), expected + " (safetensors metadata)")
        tensors = read_safetensors(path, expected)
        with reading(path, expected):
            state = json.loads(metadata[_EMA_STATE_KEY])
            names = json.loads(metadata["order"])
            if not isinstance(state, dict) or sorted(names) != sorted(tensors):
                raise ValueError("the metadata does not list the file's tensors")
            state["shadow_params"] = [tensors[name] for name in names]
        return state
    legacy = checkpoint / _LEGACY_EMA_FILE
    if not legacy.exists():
        raise FileNotFoundError(
            f"{checkpoint} has no {_EMA_FILE} (nor an earlier version's {_LEGACY_EMA_FILE})"
        )
    state = read_torch_tensors(legacy, expected)
    if not isinstance(state, dict) or not isinstance(state.get("shadow_params"), list):
        raise ArtifactError(legacy, expected, f"a {type(state).__name__} without a 'shadow_params' list")
    return state


def _check_shadow(checkpoint: Path, shadow: list[Any], params: list[torch.nn.Parameter]) -> None:
    shapes = [tuple(getattr(t, "shape", ())) for t in shadow]
    if shapes != [tuple(p.shape) for p in params]:
        raise ArtifactError(
            checkpoint,
            f"{len(params)} EMA tensors shaped like the model's parameters",
            f"{len(shadow)} tensors" + (" of other shapes" if len(shadow) == len(params) else ""),
        )


def check_checkpoint_folder(checkpoint: str | os.PathLike) -> None:
    """Refuse a checkpoint folder with a file that is corrupt or would need arbitrary unpickling.

    Every file is checked before anything is loaded from the folder: ``.json`` files are parsed,
    ``.safetensors`` headers are read, every other file is loaded with ``torch.load(weights_only=True)``
    (numpy RNG states allowed, as accelerate does). Raises :class:`~fastsample.errors.ArtifactError`
    naming the first bad file."""
    from accelerate.utils import load as accelerate_load

    checkpoint = Path(checkpoint)
    for path in sorted(checkpoint.iterdir()):
        if path.is_dir():
            raise ArtifactError(path, "only files in a checkpoint folder", "a folder")
        if path.suffix == ".json":
            with reading(path, "a JSON file"):
                json.loads(path.read_bytes().decode("utf-8"))
        elif path.suffix == ".safetensors":
            read_safetensors_metadata(path, "a safetensors file")
        else:
            expected = "a tensor-only torch file (read with torch.load(weights_only=True))"
            with reading(path, expected):
                try:
                    accelerate_load(str(path), map_location="cpu", weights_only=True)
                except pickle.UnpicklingError as error:
                    raise ArtifactError(
                        path,
                        expected,
                        "a pickle holding objects other than tensors (loading it could run code); refusing "
                        "to resume from this folder",
                    ) from error


def load_checkpoint_ema(checkpoint: str | os.PathLike, model: torch.nn.Module) -> torch.nn.Module:
    """Copy the EMA weights of a :func:`train` checkpoint folder into ``model`` (in place; returns it)."""
    checkpoint = Path(checkpoint)
    model_file = checkpoint / _MODEL_FILE
    state = read_safetensors(model_file, "the model weights of a fastsample train checkpoint")
    with reading(model_file, "the model weights of a fastsample train checkpoint"):
        model.load_state_dict(state, strict=True)  # also checks the keys
    shadow = read_checkpoint_ema(checkpoint)["shadow_params"]
    params = list(model.parameters())
    _check_shadow(checkpoint, shadow, params)
    with torch.no_grad():
        for param, value in zip(params, shadow, strict=True):
            param.copy_(value)
    return model


def load_init_weights(config: TrainConfig, model: torch.nn.Module) -> dict[str, Any]:
    """Load ``config.init_from`` into ``model`` (built from ``config``), after checking the architecture.

    Returns :func:`init_source`'s description. Raises ``ValueError`` naming the fields that differ.
    """
    source = init_source(config.init_from)
    requested = {name: getattr(config, name) for name in ARCHITECTURE_FIELDS}
    differ = {k: (requested[k], v) for k, v in source["architecture"].items() if requested[k] != v}
    if differ:
        text = ", ".join(f"{k}: requested {a}, source {b}" for k, (a, b) in differ.items())
        raise ValueError(f"init_from: the architecture of {source['path']} differs ({text})")
    if source["prediction_type"] not in (None, config.prediction_type):
        logger.warning(
            "init_from: %s was trained with prediction_type %r, this run trains %r",
            source["path"],
            source["prediction_type"],
            config.prediction_type,
        )
    if source["kind"] == "checkpoint":
        load_checkpoint_ema(source["path"], model)
    else:
        from ..zoo.default import load_dit

        exported = load_dit(source["path"])  # float32; also refuses a foreign model class
        ours = {k: v for k, v in model.config.items() if not k.startswith("_")}
        theirs = {k: exported.config.get(k) for k in ours}
        if theirs != ours:
            differ = [k for k in ours if theirs[k] != ours[k]]
            text = ", ".join(f"{k}: requested {ours[k]}, source {theirs[k]}" for k in differ)
            raise ValueError(f"init_from: the model config of {source['path']} differs ({text})")
        model.load_state_dict(exported.state_dict(), strict=True)
    return source


def build_model(config: TrainConfig) -> Any:
    """The embedded DiT, with the per-block label dropout switched off (dropout is done once per sample)."""
    from diffusers import DiTTransformer2DModel

    model = DiTTransformer2DModel(
        num_attention_heads=config.width // config.head_dim,
        attention_head_dim=config.head_dim,
        in_channels=3,
        out_channels=3,
        num_layers=config.depth,
        sample_size=IMAGE_SIZE,
        patch_size=config.patch_size,
        num_embeds_ada_norm=NUM_CLASSES,
        norm_type="ada_norm_zero",
    )
    disable_block_label_dropout(model)
    return model


def disable_block_label_dropout(model: torch.nn.Module) -> None:
    """Set every label embedding's built-in dropout to 0 (the null row of the table is kept)."""
    from diffusers.models.embeddings import LabelEmbedding

    for module in model.modules():
        if isinstance(module, LabelEmbedding):
            module.dropout_prob = 0.0


def build_noise_scheduler(prediction_type: str = "epsilon") -> Any:
    """DDPM linear betas 1e-4…0.02, 1000 steps (the training schedule); for ``"flow"`` the rectified-flow
    interpolation ``x_s = (1 − s) x0 + s ε`` of ``FlowMatchEulerDiscreteScheduler`` (1000 steps, shift 1)."""
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    if prediction_type == "flow":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        prediction_type=prediction_type,
        clip_sample=False,
    )


def sampling_scheduler_config(prediction_type: str = "epsilon") -> dict[str, Any]:
    """A DPM-Solver++(2M) config (as ``save_config`` writes it) with the training betas, to sample with; for
    ``"flow"`` the training FlowMatch Euler scheduler's own config."""
    from diffusers import DPMSolverMultistepScheduler

    if prediction_type == "flow":
        return json.loads(build_noise_scheduler("flow").to_json_string())
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        prediction_type=prediction_type,
        algorithm_type="dpmsolver++",
        solver_order=2,
    )
    return json.loads(scheduler.to_json_string())


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600 files; these are shipped package data
    os.replace(tmp, path)


def export_weights(
    model: torch.nn.Module,
    directory: str | os.PathLike,
    *,
    prediction_type: str = "epsilon",
    metadata: dict[str, str] | None = None,
) -> None:
    """Write ``dit.safetensors`` (fp16), ``dit_config.json`` and ``scheduler_config.json`` into ``directory``.

    Files are replaced atomically, so a reader never sees a half-written file.
    """
    from safetensors.torch import save

    directory = Path(directory)
    state = {name: t.detach().to("cpu", torch.float16).contiguous() for name, t in model.state_dict().items()}
    _atomic_write_bytes(directory / WEIGHT_FILE, save(state, metadata=metadata or {}))
    _atomic_write_bytes(directory / CONFIG_FILE, model.to_json_string().encode())
    scheduler_config = sampling_scheduler_config(prediction_type)
    _atomic_write_bytes(
        directory / SCHEDULER_FILE, (json.dumps(scheduler_config, indent=2, sort_keys=True) + "\n").encode()
    )


def _step_generator(seed: int, step: int, process_index: int, stream: int) -> torch.Generator:
    """Independent CPU generator for (seed, step, process, stream): no RNG state is carried across steps."""
    mixed = 0
    for value in (seed, step, process_index, stream):
        mixed = (mixed * 0x100000001B3 + int(value) + 0x9E3779B97F4A7C15) % (1 << 64)
        mixed ^= mixed >> 29
    return torch.Generator().manual_seed(mixed & ((1 << 63) - 1))


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so that the final checkpoint is written; restores the old handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _checkpoints(output_dir: Path) -> list[Path]:
    found = [p for p in output_dir.glob("checkpoint-*") if (p / _STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder in ``output_dir`` (or None)."""
    found = _checkpoints(Path(output_dir))
    return found[-1] if found else None


@contextlib.contextmanager
def _without_custom_states(checkpoint: Path) -> Iterator[Path]:
    """``checkpoint``, or a temporary view of it (symbolic links) without accelerate's
    ``custom_checkpoint_*.pkl`` files when it has some (earlier versions' EMA): accelerate refuses a folder
    with more custom states than registered objects, and must never unpickle them."""
    custom = [
        p for p in checkpoint.iterdir() if p.name.startswith("custom_checkpoint_") and p.suffix == ".pkl"
    ]
    if not custom:
        yield checkpoint
        return
    with tempfile.TemporaryDirectory(prefix="fastsample-resume-") as view:
        for path in checkpoint.iterdir():
            if path not in custom:
                os.symlink(path.resolve(), Path(view) / path.name)
        yield Path(view)


def train(config: TrainConfig, resume: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train (or resume) the embedded DiT. ``resume`` is a checkpoint folder or ``"latest"``.

    A checkpoint folder may contain only the files of :data:`CHECKPOINT_FILES`; every file is checked before
    the run resumes and one that would need arbitrary unpickling is refused (module docstring), so resuming
    from a folder of unknown origin runs no code from it.

    With ``config.init_from`` the run starts at step 0 from those weights (model and EMA; fresh optimizer
    and LR schedule); it cannot be combined with ``resume`` (resume a post-training run without it: its
    ``train_config.json`` keeps the record). Returns a summary: final step, last logged loss, wall-clock
    seconds and the output directory.
    """
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    config.validate()
    if config.init_from is not None:
        if resume is not None:
            raise ValueError(
                "init_from and resume exclude each other: init_from starts a new run at step 0, resume "
                "continues a run (a resumed post-training run keeps its init_from record)"
            )
        init_source(config.init_from)  # refuse a missing or unreadable source before anything is built
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    output_dir = Path(config.output_dir)
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available())
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the global RNG
        torch.manual_seed(config.seed)
        model = build_model(config)
    if config.init_from is not None:
        source = load_init_weights(config, model)
        logger.info("initialised from the %s %s (step 0)", source["kind"], source["path"])
    noise_scheduler = build_noise_scheduler(config.prediction_type)
    objective = DiffusionObjective(
        noise_scheduler,
        prediction_type=config.prediction_type,
        weighting=config.weighting,
        gamma=config.gamma,
        sampler=config.sampler,
        sampler_kwargs=config.sampler_kwargs,
        mixflow_gamma=config.mixflow_gamma,
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=tuple(config.adam_betas), weight_decay=config.weight_decay
    )
    warmup = config.warmup_steps
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: min(1.0, (k + 1) / (warmup + 1)))
    ema = EMAModel(
        model.parameters(),
        decay=config.ema_decay,
        use_ema_warmup=True,
        inv_gamma=1.0,
        power=config.ema_power,
    )
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    # Only the training forward is compiled: checkpoints, the EMA and exports keep using `model` itself, so
    # their parameter names never carry torch.compile's `_orig_mod.` prefix.
    forward = torch.compile(model) if config.compile else model
    ema.to(accelerator.device)
    # The EMA is not registered with accelerate (whose load_state unpickles registered objects with
    # weights_only=False): fastsample writes and reads it as ema.safetensors.

    step = 0
    if resume is not None:
        path = latest_checkpoint(output_dir) if str(resume) == "latest" else Path(resume)
        if path is None:
            logger.info("no checkpoint in %s: starting from scratch", output_dir)
        else:
            if not (path / _STATE_FILE).exists():
                raise FileNotFoundError(f"{path} is not a checkpoint folder (no {_STATE_FILE})")
            check_checkpoint_folder(path)  # before anything is loaded from it
            ema_state = read_checkpoint_ema(path)
            _check_shadow(
                path, ema_state["shadow_params"], list(accelerator.unwrap_model(model).parameters())
            )
            with reading(path, "a checkpoint of this run"):
                with _without_custom_states(path) as readable:
                    accelerator.load_state(str(readable))
                ema.load_state_dict(ema_state)
            ema.to(accelerator.device)
            state_file = path / _STATE_FILE
            trainer_state = read_json(state_file, "the trainer_state.json of a checkpoint")
            require_fields(state_file, trainer_state, ("step",), "the trainer_state.json of a checkpoint")
            step = trainer_state["step"]
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise ArtifactError(state_file, "a step count >= 0", repr(step))
            logger.info("resumed from %s at step %d", path, step)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        record = asdict(config)
        previous = output_dir / "train_config.json"
        if config.init_from is not None:  # absolute, so that the record is usable from anywhere
            record["init_from"] = str(Path(config.init_from).resolve())
        elif resume is not None and previous.exists():  # keep a post-training run's init_from on resume
            record["init_from"] = read_json(previous, "the train_config.json of this run").get("init_from")
        (output_dir / "train_config.json").write_text(json.dumps(record, indent=2) + "\n")

    null_label = NUM_CLASSES
    per_process = config.batch_size
    model.train()
    start = time.monotonic()
    last_checkpoint = time.monotonic()
    running, running_count, last_loss = 0.0, 0, float("nan")
    bar = tqdm(
        total=config.steps,
        initial=step,
        disable=not (config.progress and accelerator.is_main_process),
        desc="train DiT",
    )

    saved_step = step

    def checkpoint_due(last: float) -> bool:
        if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
            return True
        if config.checkpoint_every_minutes <= 0:
            return False
        due = float(time.monotonic() - last >= 60 * config.checkpoint_every_minutes)
        # All processes must agree, or one would wait forever in save_state.
        return accelerator.reduce(torch.tensor([due], device=accelerator.device), reduction="sum").item() > 0

    def save_checkpoint() -> None:
        nonlocal saved_step
        saved_step = step
        accelerator.wait_for_everyone()
        path = output_dir / f"checkpoint-{step}"
        accelerator.save_state(str(path))
        if accelerator.is_main_process:
            save_ema_state(ema, accelerator.unwrap_model(model), path / _EMA_FILE)
            (path / _STATE_FILE).write_text(json.dumps({"step": step, "loss": last_loss}) + "\n")
            for old in _checkpoints(output_dir)[: -config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
            if config.export_dir:
                export_ema(config.export_dir)
            logger.info("checkpoint %s written", path)
        accelerator.wait_for_everyone()

    def export_ema(directory: str | os.PathLike) -> None:
        unwrapped = accelerator.unwrap_model(model)
        ema.store(unwrapped.parameters())
        ema.copy_to(unwrapped.parameters())
        try:
            export_weights(
                unwrapped,
                directory,
                prediction_type=config.prediction_type,
                metadata={"step": str(step), "loss": f"{last_loss:.6f}", "ema": "true"},
            )
        finally:
            ema.restore(unwrapped.parameters())

    with _sigterm_as_exit():
        try:
            while step < config.steps:
                rank = accelerator.process_index
                data_gen = _step_generator(config.seed, step, rank, 0)
                x0, labels = generate_batch(per_process, generator=data_gen)
                drop = torch.rand(per_process, generator=data_gen) < config.label_dropout
                labels = torch.where(drop, torch.full_like(labels, null_label), labels)
                x0, labels = x0.to(accelerator.device), labels.to(accelerator.device)
                batch = objective.prepare(x0, generator=_step_generator(config.seed, step, rank, 1))
                with accelerator.autocast():
                    pred = forward(batch.model_input, timestep=batch.timesteps, class_labels=labels).sample
                loss = objective.loss(pred, batch)
                accelerator.backward(loss)
                if config.grad_clip > 0:
                    accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                ema.step(accelerator.unwrap_model(model).parameters())
                step += 1
                bar.update(1)

                loss_value = accelerator.reduce(loss.detach(), reduction="mean").item()
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"loss became {loss_value} at step {step}")
                running += loss_value
                running_count += 1
                if step % config.log_every == 0 or step == config.steps:
                    last_loss = running / running_count
                    running, running_count = 0.0, 0
                    elapsed = time.monotonic() - start
                    bar.set_postfix(loss=f"{last_loss:.4f}")
                    log = logger.info if accelerator.is_main_process else logger.debug
                    log(
                        "step %d loss %.5f lr %.2e ema_decay %.4f elapsed %.0fs",
                        step,
                        last_loss,
                        lr_scheduler.get_last_lr()[0],
                        ema.cur_decay_value or 0.0,
                        elapsed,
                    )
                if step < config.steps and checkpoint_due(last_checkpoint):
                    save_checkpoint()
                    last_checkpoint = time.monotonic()
        except FloatingPointError:
            bar.close()
            raise  # never checkpoint a diverged model
        except BaseException:
            bar.close()
            if step > saved_step:
                save_checkpoint()  # on Ctrl-C / SIGTERM: keep the progress
            raise
    bar.close()
    if step > saved_step:
        save_checkpoint()
    return {
        "step": step,
        "loss": last_loss,
        "seconds": time.monotonic() - start,
        "output_dir": str(output_dir),
    }
