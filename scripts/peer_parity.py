#!/usr/bin/env python3
"""Every formulation of the PyTorch peer (`basisnet_torch.FORMULATIONS`) against the
per-sample reference (one plain convolution or matmul per sample with its blended kernel):
outputs and the gradients of the input, the coefficients, the bank and its bias, in both
memory layouts, on the layer kinds of MobileNetV3 (strided stem, 3x3 and strided 5x5
depthwise with bias, pointwise, squeeze-excite 1x1 on a 1x1 input, linear).

Prints one line per case; when any relative gap (max |peer - reference| / max |reference|)
reaches 1e-4, prints them to standard error too and exits 1.
"""

import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from basisnet_torch import (  # noqa: E402
    DEFAULT_PLAN,
    FORMULATIONS,
    BasisConv2d,
    BasisLinear,
    Coefficients,
)

TOLERANCE = 1e-4
N, B = 4, 3


def reference(layer, x, alpha):
    """Per sample: blend the kernel, run the plain layer."""
    outs = []
    for b in range(x.shape[0]):
        w = torch.einsum("n,n...->...", alpha[b], layer.weight)
        bias = None if layer.bias is None else alpha[b] @ layer.bias
        if isinstance(layer, BasisLinear):
            outs.append(F.linear(x[b : b + 1], w, bias))
        else:
            outs.append(
                F.conv2d(x[b : b + 1], w, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
            )
    return torch.cat(outs)


def gradients(layer, ctx, x, alpha, run):
    x = x.detach().clone().requires_grad_(True)
    a = alpha.detach().clone().requires_grad_(True)
    ctx.alpha = a
    layer.zero_grad()
    y = run(x, a)
    # A fixed random projection makes every output element matter to the gradients.
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    (y * g).sum().backward()
    grads = [x.grad, a.grad, layer.weight.grad] + ([layer.bias.grad] if layer.bias is not None else [])
    return [y.detach()] + [t.detach().clone() for t in grads]


def gap(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def main():
    torch.manual_seed(0)
    ctx = Coefficients()
    cases = [
        ("dense", "stem 3x3 s2", nn.Conv2d(3, 16, 3, 2, 1, bias=False), 17),
        ("depthwise", "3x3", nn.Conv2d(24, 24, 3, 1, 1, groups=24, bias=False), 10),
        ("depthwise", "5x5 s2 bias", nn.Conv2d(24, 24, 5, 2, 2, groups=24), 15),
        ("pointwise", "1x1", nn.Conv2d(24, 40, 1, bias=False), 9),
        ("vector", "squeeze-excite 1x1", nn.Conv2d(40, 16, 1), 1),
        ("vector", "linear", nn.Linear(40, 10), None),
    ]
    worst = 0.0
    lines = []
    for kind, name, base, hw in cases:
        if hw is None:
            layer = BasisLinear(base, N, ctx)
            x = torch.randn(B, base.in_features)
            formats = [None]
        else:
            layer = BasisConv2d(base, N, ctx)
            x = torch.randn(B, base.in_channels, hw, hw)
            formats = [torch.contiguous_format, torch.channels_last]
        for p in layer.parameters():
            nn.init.normal_(p)
        alpha = torch.softmax(torch.randn(B, N), -1)
        want = gradients(layer, ctx, x, alpha, lambda x, a: reference(layer, x, a))
        for option in FORMULATIONS[kind]:
            for fmt in formats:
                ctx.plan = dict(DEFAULT_PLAN, **{kind: option})
                xin = x if fmt is None else x.contiguous(memory_format=fmt)
                got = gradients(layer, ctx, xin, alpha, lambda x, a: layer(x))
                gaps = [gap(g, w) for g, w in zip(got, want)]
                worst = max(worst, *gaps)
                layout = "" if fmt is None else (" channels_last" if fmt == torch.channels_last else " contiguous")
                lines.append(
                    f"{kind} {name} {option}{layout}: output {gaps[0]:.1e}, "
                    f"grads (input, alpha, bank{', bias' if len(gaps) > 4 else ''}) "
                    + ", ".join(f"{g:.1e}" for g in gaps[1:])
                )
    lines.append(f"worst relative gap {worst:.1e} (tolerance {TOLERANCE:.0e})")
    print("\n".join(lines))
    if worst >= TOLERANCE:
        print("\n".join(lines), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
