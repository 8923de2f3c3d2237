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


def test_device_type_agrees_with_torch_and_skips_it_where_no_gpu_can_be(monkeypatch, tmp_path):
    import subprocess
    import sys

    import cellfeat.device as device

    for asked in ("auto", "cpu"):
        assert device.device_type(asked) == resolve_device(asked).type
    if device.no_gpu_possible():  # the claim it rests on, where this runs
        assert not torch.cuda.is_available()
    else:
        pytest.skip("this machine has GPU device files: torch is asked")
    code = "import sys, cellfeat.device as d; assert d.device_type('auto') == 'cpu'; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
    present = tmp_path / "nvidiactl"
    present.touch()
    monkeypatch.setattr(device, "GPU_DEVICE_FILES", (str(present),))
    assert not device.no_gpu_possible() and device.device_type("auto") == "cpu"  # asked torch, which sees none
    with pytest.raises(DeviceError, match="device must be"):
        device.device_type("mps")
