"""EfficientNet-Lite made ready for inference: what :class:`cellfeat.embed.Embedder` runs.

Three rewrites of a copy of the network, none of which changes what it computes beyond float32
rounding (the embeddings stay within ~5e-6 of the largest value, the size of the differences
between batch sizes or memory layouts):

* every BatchNorm that follows a convolution is folded into it (eval mode: its running
  statistics are constants), ``w' = w g / sqrt(var + eps)``, ``b' = beta + (b - mean) g / sqrt(var + eps)``;
* the stride-1 "same" convolutions (odd kernels: TensorFlow's padding is symmetric there, for any
  input size) pad inside the convolution instead of copying the input into a padded tensor first
  (bit-identical);
* ReLU6 runs in place, on the convolution's own output.

On this project's CPU (oneDNN, one thread, 64-pixel crops, batch 64) EfficientNet-Lite0 ran 2.07 ->
1.11 ms a crop (``python scripts/bench_embed_layout.py``). Only the modules of
``efficientnet_lite_pytorch`` are rewritten (their forward passes were read for the in-place
activation: no activation's input is used again); any other backbone is left as it is.
Training never sees this copy: ``cellfeat train-embedder`` trains the network with its BatchNorms.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

# (convolution, the BatchNorm after it) attribute pairs of efficientnet_lite_pytorch's EfficientNet and MBConvBlock
_PAIRS = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"), ("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"),
          ("_project_conv", "_bn2"))  # fmt: skip


def _lite_classes() -> tuple[type, ...]:
    try:
        from efficientnet_lite_pytorch.model import EfficientNet, MBConvBlock
    except ImportError:
        return ()
    return EfficientNet, MBConvBlock


def fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold eval-mode ``bn`` into ``conv`` (in place): ``bn(conv(x)) == conv'(x)`` up to rounding."""
    with torch.no_grad():
        gain = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight = nn.Parameter(conv.weight * gain.reshape(-1, 1, 1, 1), requires_grad=False)
        conv.bias = nn.Parameter(bn.bias + (bias - bn.running_mean) * gain, requires_grad=False)


def _padded_inside(conv: nn.Conv2d) -> nn.Conv2d | None:
    """A plain convolution that pads by itself what a stride-1, odd-kernel dynamic "same"
    convolution pads before it (None for any other convolution)."""
    from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding

    if type(conv) is not Conv2dDynamicSamePadding or tuple(conv.stride) != (1, 1) or tuple(conv.dilation) != (1, 1):
        return None
    if not all(k % 2 for k in conv.kernel_size):
        return None
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=1,
                    padding=tuple((k - 1) // 2 for k in conv.kernel_size), groups=conv.groups, bias=conv.bias is not None)  # fmt: skip
    new.weight, new.bias = conv.weight, conv.bias
    return new


def for_inference(module: nn.Module) -> nn.Module:
    """An eval-mode copy of ``module`` with its EfficientNet-Lite parts rewritten for inference
    (see the module's text); ``module`` itself is left as it is."""
    classes = _lite_classes()
    out = copy.deepcopy(module).eval()
    if not classes:
        return out
    lite = [m for m in out.modules() if isinstance(m, classes)]
    for part in lite:
        for conv_name, bn_name in _PAIRS:
            conv, bn = getattr(part, conv_name, None), getattr(part, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                fold_batch_norm(conv, bn)
                setattr(part, bn_name, nn.Identity())
        if isinstance(getattr(part, "_swish", None), nn.ReLU6):
            part._swish.inplace = True
        for name, child in list(part.named_children()):
            padded = _padded_inside(child) if isinstance(child, nn.Conv2d) else None
            if padded is not None:
                setattr(part, name, padded)
    return out
