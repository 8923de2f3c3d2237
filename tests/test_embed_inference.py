"""The embedder's inference copy of EfficientNet-Lite (cellfeat.embed_inference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("efficientnet_lite_pytorch")


def _outputs(module: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return module(x).numpy()


def test_the_rewritten_copy_computes_what_the_network_does_and_leaves_it_alone():
    """In float64 the rewrite is exact up to 1e-9 (the algebra), also with BatchNorm statistics
    far from their defaults; the original network keeps its BatchNorms and values."""
    from cellfeat.embed import build_backbone
    from cellfeat.embed_inference import for_inference

    net = build_backbone(n_channels=6).eval().double()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(0))
                m.running_var.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fast = for_inference(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())  # every one folded
    assert any(isinstance(m, nn.ReLU6) and m.inplace for m in fast.modules())
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # the original untouched
    assert not any(isinstance(m, nn.ReLU6) and m.inplace for m in net.modules())
    for shape in ((5, 6, 48, 48), (2, 6, 37, 41)):  # any crop size: odd ones pad asymmetrically at stride 2
        x = torch.from_numpy(np.random.default_rng(0).standard_normal(shape))
        expected = _outputs(net, x)
        assert np.abs(expected).max() > 0.1
        np.testing.assert_allclose(_outputs(fast, x), expected, rtol=0, atol=1e-9)


def test_in_float32_the_imagenet_network_moves_by_rounding_only():
    from cellfeat.embed import build_backbone
    from cellfeat.embed_inference import for_inference

    net = build_backbone(n_channels=6).eval()
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((8, 6, 64, 64)).astype(np.float32))
    expected = _outputs(net, x)
    got = _outputs(for_inference(net), x)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5 * np.abs(expected).max())


def test_other_backbones_are_copied_as_they_are():
    from cellfeat.embed_inference import for_inference

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU6()).eval()
    copy = for_inference(net)
    assert copy is not net and isinstance(copy[1], nn.BatchNorm2d) and not copy[2].inplace
    x = torch.randn(2, 3, 8, 8)
    assert np.array_equal(_outputs(copy, x), _outputs(net, x))
