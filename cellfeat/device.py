"""Which torch device a GPU-capable stage (Cellpose, CNN embeddings) runs on.

One rule for every such stage: ``"auto"`` is CUDA when torch sees a GPU, else the CPU;
``"cpu"``, ``"cuda"`` and ``"cuda:N"`` are taken as given, and asking for CUDA where torch
sees none is an error, never a silent move to the CPU.
"""

from __future__ import annotations

import torch

from cellfeat.errors import ConfigError

DEVICE_CHOICES = "'auto', 'cpu', 'cuda' or 'cuda:N'"


class DeviceError(ConfigError):
    """A device setting that names no usable device."""


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"``: CUDA when torch sees a GPU, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:1"`` as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"device must be {DEVICE_CHOICES}, got {device!r}") from exc
    if resolved.type not in ("cpu", "cuda"):
        raise DeviceError(f"device must be {DEVICE_CHOICES}, got {device!r}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} asked for, but torch sees no CUDA GPU; use device \"auto\" or \"cpu\"")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r} asked for, but torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return resolved
