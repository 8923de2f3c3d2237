"""Which torch device a GPU-capable stage (Cellpose, CNN embeddings) runs on.

One rule for every such stage: ``"auto"`` is CUDA when torch sees a GPU, else the CPU;
``"cpu"``, ``"cuda"`` and ``"cuda:N"`` are taken as given, and asking for CUDA where torch
sees none is an error, never a silent move to the CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cellfeat.errors import ConfigError

if TYPE_CHECKING:
    import torch

# what a Linux GPU runtime torch can use needs: NVIDIA's control device and driver, AMD's ROCm
# kernel driver, WSL2's GPU paravirtualization
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")

DEVICE_CHOICES = "'auto', 'cpu', 'cuda' or 'cuda:N'"
# a network's arithmetic: "auto" = bfloat16 autocast on a CUDA GPU (float16 where it has no
# bfloat16), float32 on the CPU; the others as named, anywhere
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class DeviceError(ConfigError):
    """A device setting that names no usable device."""


def no_gpu_possible() -> bool:
    """True on a Linux machine with none of the device files a GPU runtime needs
    (:data:`GPU_DEVICE_FILES`): torch could see no GPU there, so nobody need import it (~1.5 s)
    to be told so. Elsewhere (or with any of them present) False: ask torch."""
    return sys.platform.startswith("linux") and not any(Path(p).exists() for p in GPU_DEVICE_FILES)


def device_type(device: str = "auto") -> str:
    """``resolve_device(device).type`` without importing torch where the answer is the CPU anyway."""
    if device == "cpu" or (device == "auto" and no_gpu_possible()):
        return "cpu"
    return resolve_device(device).type


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"``: CUDA when torch sees a GPU, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:1"`` as given."""
    import torch

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


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` (:data:`PRECISIONS`) on ``device`` (``None``: plain
    float32). One rule for the embeddings and Cellpose."""
    import torch

    if precision not in PRECISIONS:
        raise DeviceError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
