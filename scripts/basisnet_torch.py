"""A PyTorch eager BasisNet, written the way a PyTorch user writes it, for the benchmarks
that compare basisnet-rs with PyTorch on the same weights.

- `BasisConv2d` / `BasisLinear`: N basis kernels blended per sample from the coefficients
  in the usual CondConv formulation (timm's `CondConv2d`): kernels `alpha @ bank`, one
  grouped convolution over the batch (groups * B), one batched matmul for linear layers.
- `BasisNet`: torchvision's MobileNetV3-Large (or -Small) as the lightweight model plus a
  linear coefficient head, and a second MobileNet whose every Conv2d and Linear is a basis
  layer; variable names are basisnet-rs's (`lightweight.*`, `specialist.*`), so its
  safetensors load with `strict=True`.
- `early_exit`: lightweight model on every image, the specialist only on the images whose
  max softmax probability is below the threshold (gathered into one smaller batch).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from torchvision.models import mobilenet_v3_large, mobilenet_v3_small

BACKBONES = {"mobilenet_v3_large": mobilenet_v3_large, "mobilenet_v3_small": mobilenet_v3_small}


class Coefficients:
    """The per-sample coefficients `[B, N]` every basis layer of one forward pass reads."""

    alpha = None


class BasisConv2d(nn.Module):
    def __init__(self, conv, n, ctx):
        super().__init__()
        self.ctx = ctx
        self.stride, self.padding = conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        self.weight = nn.Parameter(torch.empty(n, *conv.weight.shape))
        self.bias = None
        if conv.bias is not None:
            self.bias = nn.Parameter(torch.empty(n, conv.out_channels))

    def forward(self, x):
        alpha = self.ctx.alpha.to(x.dtype)
        b, c, h, w = x.shape
        n = self.weight.shape[0]
        shape = self.weight.shape[1:]
        kernel = (alpha @ self.weight.reshape(n, -1)).reshape(b * shape[0], *shape[1:])
        bias = None if self.bias is None else (alpha @ self.bias).reshape(-1)
        y = F.conv2d(
            x.reshape(1, b * c, h, w),
            kernel,
            bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups * b,
        )
        return y.reshape(b, shape[0], y.shape[-2], y.shape[-1])


class BasisLinear(nn.Module):
    def __init__(self, linear, n, ctx):
        super().__init__()
        self.ctx = ctx
        self.weight = nn.Parameter(torch.empty(n, *linear.weight.shape))
        self.bias = nn.Parameter(torch.empty(n, linear.out_features))

    def forward(self, x):
        alpha = self.ctx.alpha.to(x.dtype)
        n, o, i = self.weight.shape
        kernel = (alpha @ self.weight.reshape(n, -1)).reshape(-1, o, i)
        return torch.bmm(kernel, x.unsqueeze(2)).squeeze(2) + alpha @ self.bias


def basis_layers(module, n, ctx):
    """Replace every Conv2d and Linear of `module` by its N-basis version, in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d):
            setattr(module, name, BasisConv2d(child, n, ctx))
        elif isinstance(child, nn.Linear):
            setattr(module, name, BasisLinear(child, n, ctx))
        else:
            basis_layers(child, n, ctx)


class BasisNet(nn.Module):
    def __init__(self, arch, classes, n, light_resolution, temperature):
        super().__init__()
        self.ctx = Coefficients()
        self.light_resolution = light_resolution
        self.temperature = temperature
        self.lightweight = BACKBONES[arch](num_classes=classes, dropout=0.0)
        features = self.lightweight.classifier[0].in_features
        self.lightweight.coefficient_head = nn.Linear(features, n)
        self.specialist = BACKBONES[arch](num_classes=classes, dropout=0.0)
        basis_layers(self.specialist, n, self.ctx)

    def light_input(self, images):
        # The antialiased resize has no bf16 CPU kernel: resize in fp32.
        return F.interpolate(
            images.float(),
            size=(self.light_resolution, self.light_resolution),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        ).to(images.dtype)

    def lightweight_stage(self, images):
        lw = self.lightweight
        pooled = torch.flatten(lw.avgpool(lw.features(self.light_input(images))), 1)
        alpha = torch.softmax(lw.coefficient_head(pooled).float() / self.temperature, -1)
        return lw.classifier(pooled), alpha

    def forward(self, images):
        light_logits, self.ctx.alpha = self.lightweight_stage(images)
        return light_logits, self.specialist(images)

    @torch.no_grad()
    def early_exit(self, images, threshold):
        light_logits, alpha = self.lightweight_stage(images)
        confidence = torch.softmax(light_logits.float(), -1).amax(-1)
        rest = (confidence < threshold).nonzero().flatten()
        logits = light_logits.clone()
        if rest.numel() > 0:
            self.ctx.alpha = alpha.index_select(0, rest)
            special = self.specialist(images.index_select(0, rest))
            logits.index_copy_(0, rest, special.to(logits.dtype))
        return logits, rest.numel()


def read_state(path):
    """Tensors and metadata of a safetensors file."""
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
