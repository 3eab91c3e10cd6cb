"""Run-time helpers of the commands: ``--pipeline`` through the one loader and ``--device`` checks, both
reporting mistakes as :class:`~fastsample.cli._common.CommandError` that name the flag."""

from __future__ import annotations

from typing import Any

from fastsample.cli._common import CommandError

__all__ = ["check_device", "load_pipeline_arg"]


def check_device(device: str, argument: str = "--device") -> None:
    """Refuse a device this torch build cannot use (CUDA on a CPU build, an unknown name), before any work."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as error:
        raise CommandError(argument, f"{device!r} is not a torch device ({error})") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise CommandError(argument, f"{device}: CUDA is not available (this torch build or machine)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise CommandError(argument, f"{device}: only {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise CommandError(argument, f"{device}: MPS is not available on this machine")


def load_pipeline_arg(spec: str, *, device: str = "cpu", dtype: Any = "float32", seed: int = 0) -> Any:
    """:func:`fastsample.cli.loading.load_pipeline` with its expected errors (unknown spec, missing
    folder, a fixture whose text encoders need ``transformers``) reported against ``--pipeline``."""
    from fastsample.cli.loading import load_pipeline

    try:
        return load_pipeline(spec, device=device, dtype=dtype, seed=seed)
    except ImportError as error:
        raise CommandError("--pipeline", f"{spec} needs a package that is not installed: {error}") from error
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:
        raise CommandError("--pipeline", str(error)) from error
