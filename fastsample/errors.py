"""fastsample's error types, and the one place that turns a bad file into a clear error.

Every loader of a file that fastsample reads (router artifacts, LinearAG coefficients, feature nets, exported
DiT weights, FID statistics, Inception weights, training checkpoints) raises :class:`ArtifactError` when the
file is corrupt, truncated or foreign: a ``ValueError`` whose message names the file, what was expected and
what was found. A missing file stays a ``FileNotFoundError``.

Loaders use :func:`reading` around the code that parses a file, and the readers below for the common formats;
none of them ever unpickles anything but tensors (``torch.load(weights_only=True)``, ``np.load(
allow_pickle=False)``).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import struct
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

__all__ = [
    "ArtifactError",
    "read_json",
    "read_npz",
    "read_safetensors",
    "read_safetensors_metadata",
    "read_torch_tensors",
    "reading",
    "require_fields",
]


class ArtifactError(ValueError):
    """A file fastsample was asked to load is corrupt, truncated or not what it should be.

    Attributes:
        path: the file (or folder) as a string.
        expected: what the loader expected to find there.
        found: what it found instead (the parser's own words when it failed).
    """

    def __init__(self, path: str | os.PathLike, expected: str, found: str) -> None:
        self.path = os.fspath(path)
        self.expected = expected
        self.found = found
        super().__init__(f"cannot load {self.path!r}: expected {expected}; found {found}")

    def __reduce__(self) -> tuple:  # picklable across processes (the message is rebuilt)
        return type(self), (self.path, self.expected, self.found)


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = text[:300]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# Missing or unreadable files are an environment problem, reported as they are.
_ENVIRONMENT_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
# What parsers raise on bad bytes or a bad structure.
_PARSE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # other OS errors raised while parsing (e.g. numpy on odd bytes)
    ValueError,  # includes json.JSONDecodeError and UnicodeDecodeError
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    EOFError,
    RuntimeError,  # torch.load on bad zip archives, load_state_dict on mismatched tensors
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    OverflowError,
    MemoryError,  # a corrupt size field asking for an impossible allocation
    struct.error,
    zlib.error,
)


def _parse_errors() -> tuple[type[BaseException], ...]:
    errors = _PARSE_ERRORS
    with contextlib.suppress(ImportError):
        from safetensors import SafetensorError

        errors = (*errors, SafetensorError)
    return errors


@contextlib.contextmanager
def reading(path: str | os.PathLike, expected: str) -> Iterator[None]:
    """Turn any parse error raised inside the block into an :class:`ArtifactError` naming ``path``.

    An :class:`ArtifactError` raised inside passes through unchanged, and so do a missing file, a folder in
    place of a file and a permission error."""
    try:
        yield
    except (ArtifactError, *_ENVIRONMENT_ERRORS):
        raise
    except _parse_errors() as error:
        raise ArtifactError(path, expected, _describe(error)) from error


def read_json(path: str | os.PathLike, expected: str = "a JSON object") -> dict[str, Any]:
    """A UTF-8 JSON file holding an object (dict)."""
    with reading(path, expected), open(path, "rb") as handle:
        value = json.loads(handle.read().decode("utf-8"))
    if not isinstance(value, dict):
        raise ArtifactError(path, expected, f"a JSON {type(value).__name__}, not an object")
    return value


def require_fields(
    path: str | os.PathLike, mapping: Mapping[str, Any], fields: Sequence[str], expected: str
) -> None:
    """Refuse ``mapping`` (read from ``path``) unless it has every key in ``fields``."""
    missing = [name for name in fields if name not in mapping]
    if missing:
        raise ArtifactError(path, expected, f"no field(s) {missing} (has {sorted(mapping)})")


def read_safetensors(path: str | os.PathLike, expected: str = "a safetensors file") -> dict[str, Any]:
    """All tensors of a ``.safetensors`` file (on CPU)."""
    from safetensors.torch import load_file

    with reading(path, expected):
        return load_file(os.fspath(path))


def read_safetensors_metadata(
    path: str | os.PathLike, expected: str = "a safetensors file"
) -> dict[str, str]:
    """The ``__metadata__`` of a ``.safetensors`` file's header (``{}`` when it has none)."""
    from safetensors import safe_open

    with reading(path, expected), safe_open(os.fspath(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def read_torch_tensors(path: str | os.PathLike, expected: str = "a tensor-only torch file") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU: tensors, numbers, strings and containers only; any
    other pickled object (code) is refused, naming the file."""
    import torch

    with reading(path, expected):
        try:
            return torch.load(os.fspath(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise ArtifactError(
                path,
                expected,
                "a pickle holding objects other than tensors, refused by torch.load(weights_only=True) "
                f"because loading it could run code ({_describe(error)[:160]})",
            ) from error


_ZIP_MAGIC = b"PK\x03\x04"


def read_npz(
    path: str | os.PathLike, keys: Sequence[str], expected: str = "a NumPy .npz archive"
) -> dict[str, Any]:
    """Every array of an ``.npz`` archive, which must hold ``keys``. Never unpickles: anything that is not a
    zip archive is refused before NumPy sees it, and so are object arrays."""
    import numpy as np

    with open(path, "rb") as handle:
        head = handle.read(len(_ZIP_MAGIC))
    if head != _ZIP_MAGIC:
        raise ArtifactError(path, expected, f"no zip archive signature (the file starts with {head!r})")
    arrays = {}
    with reading(path, expected), np.load(os.fspath(path), allow_pickle=False) as data:
        require_fields(path, {name: None for name in data.files}, keys, expected)
        for name in data.files:
            try:
                arrays[name] = data[name]
            except ValueError as error:
                if "allow_pickle" not in str(error):
                    raise
                raise ArtifactError(
                    path, expected, f"array {name!r} holds pickled Python objects (refused)"
                ) from error
    return arrays
