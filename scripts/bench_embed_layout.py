"""The crop embedder's speed on this machine by memory layout and precision (issue 25).

EfficientNet-Lite0 as ``[embed]`` builds it (6 channels, 64-pixel crops), random weights in its
stem as the packaged ImageNet file gives them; random crops (speed does not depend on the
values). Times inference (batch 64, ``--threads`` torch threads) of the network as built (with
its BatchNorms) and of the embedder's inference copy (``cellfeat.embed_inference``: BatchNorms
folded, stride-1 convolutions padding inside, ReLU6 in place), in the default (NCHW) and the
channels-last layout, in float32 and under bfloat16 autocast, and one training step (forward,
backward, AdamW) of the network as built in both layouts in float32; prints ms a crop and the
smallest cosine similarity of each variant's embeddings to the built network's float32 NCHW ones.

    OMP_NUM_THREADS=1 python scripts/bench_embed_layout.py --threads 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from cellfeat.embed import build_backbone, pooled
from cellfeat.embed_config import EmbedConfig

COLORS = [[0, 0, 1], [0, 1, 0], [1, 0, 0], [0, 1, 1], [1, 0, 1], [1, 1, 0]]


def _infer(module, x, fmt, bf16: bool, batch: int) -> torch.Tensor:
    out = []
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(x), batch):
            out.append(pooled(module(x[start : start + batch].contiguous(memory_format=fmt))).float())
    return torch.cat(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--crops", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = EmbedConfig.from_table({"device": "cpu"})

    def built():
        return build_backbone(cfg.backbone, cfg.weights or None, n_channels=len(COLORS), channels=cfg.channels, colors=COLORS)

    networks = {"built": built().eval(), "inference copy": cfg.embedder(COLORS).module}
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((args.crops, 6, cfg.crop_size, cfg.crop_size)).astype(np.float32))
    reference = None
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, {args.threads} thread(s)")
    for name, module in networks.items():
        for fmt, label in ((torch.contiguous_format, "NCHW"), (torch.channels_last, "channels-last")):
            module = module.to(memory_format=fmt)
            for bf16 in (False, True):
                _infer(module, x, fmt, bf16, args.batch)  # oneDNN's primitives made
                start = time.perf_counter()
                out = _infer(module, x, fmt, bf16, args.batch)
                ms = (time.perf_counter() - start) / len(x) * 1e3
                reference = out if reference is None else reference
                cosine = torch.nn.functional.cosine_similarity(out, reference).min().item()
                diff = ((out - reference).abs().max() / reference.abs().max()).item()
                print(f"inference {name:14s} {label:13s} {'bf16' if bf16 else 'fp32'}: {ms:.2f} ms a crop, "
                      f"min cosine to the built fp32 NCHW {cosine:.4f}, max difference {diff:.1e} of the largest value")
    y = torch.randint(0, 40, (args.batch,))
    for fmt, label in ((torch.contiguous_format, "NCHW"), (torch.channels_last, "channels-last")):
        torch.manual_seed(0)
        net = built().train().to(memory_format=fmt)
        head = torch.nn.Linear(1280, 40)
        optimizer = torch.optim.AdamW([*net.parameters(), *head.parameters()], lr=1e-3)
        batch = x[: args.batch].contiguous(memory_format=fmt)

        def step() -> None:
            loss = torch.nn.functional.cross_entropy(head(pooled(net(batch))), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        step()
        start = time.perf_counter()
        for _ in range(3):
            step()
        print(f"training step {label:13s} fp32: {(time.perf_counter() - start) / 3 / args.batch * 1e3:.2f} ms a crop")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
