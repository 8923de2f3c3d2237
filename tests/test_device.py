"""The one device rule of the GPU-capable stages (cellfeat.device)."""

from __future__ import annotations

import pytest
import torch

from cellfeat.device import DeviceError, resolve_device


def test_device_choice():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"
    for bad in ("gpu-please", "mps", ""):
        with pytest.raises(DeviceError, match="device must be"):
            resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where torch sees no GPU")
def test_cuda_without_a_gpu_is_an_error_not_the_cpu():
    for asked in ("cuda", "cuda:0"):
        with pytest.raises(DeviceError, match="no CUDA"):
            resolve_device(asked)


@pytest.mark.gpu
def test_cuda_index_beyond_the_gpus_is_an_error():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    with pytest.raises(DeviceError, match="CUDA GPU"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")
