"""The PyTorch BasisNet the benchmarks compare basisnet-rs with: the strongest eager version a
competent PyTorch user writes, on the same weights.

Every basis layer holds N kernels `weight[N, *kernel]` (and `bias[N, out]`) blended per
sample from the coefficients `alpha[B, N]`. PyTorch has no batched per-sample convolution,
so a user picks, per kind of layer, among the known batching tricks; this module has them
all and `choose_plan` keeps, per kind, the fastest on the machine, batch and precision at
hand (greedy, whole-model timings, both memory layouts):

| kind | layers of MobileNetV3 | formulations |
|---|---|---|
| `dense` | the k x k stem | `grouped`: synthesize the B kernels, one convolution with groups = B (timm's CondConv2d); `mix`: one convolution with N x out filters, outputs mixed by alpha |
| `depthwise` | every depthwise k x k | `grouped` (groups = B x C); `mix` (channel multiplier N, outputs mixed); `shift`: k x k shifted multiply-adds of the input with the synthesized per-sample taps, in the input's layout |
| `pointwise` | 1 x 1 convolutions on a feature map | `bmm`: synthesize, one `torch.bmm` over the batch (channels-last inputs as `[B, HW, C]` without a copy); `grouped` |
| `vector` | linear layers and squeeze-excite 1 x 1 convolutions (1 x 1 input) | `gemm`: one GEMM over all N banks (`x @ W[N*out, in]^T`), outputs mixed; `bmm`: synthesized matrices, one `torch.bmm` |

`BasisNet`: torchvision's MobileNetV3 as the lightweight model plus a linear coefficient head,
and a second MobileNet whose every Conv2d and Linear is a basis layer; variable names are
basisnet-rs's (`lightweight.*`, `specialist.*`), so its safetensors load with `strict=True`.
`early_exit`: lightweight model on every image, the specialist only on the images whose max
softmax probability is below the threshold (gathered into one smaller batch).
"""

import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from torchvision.models import mobilenet_v3_large, mobilenet_v3_small

BACKBONES = {"mobilenet_v3_large": mobilenet_v3_large, "mobilenet_v3_small": mobilenet_v3_small}

FORMULATIONS = {
    "dense": ("grouped", "mix"),
    "depthwise": ("grouped", "mix", "shift"),
    "pointwise": ("bmm", "grouped"),
    "vector": ("gemm", "bmm"),
}
# The CondConv starting point of the search.
DEFAULT_PLAN = {"dense": "grouped", "depthwise": "grouped", "pointwise": "bmm", "vector": "gemm"}


class Coefficients:
    """What every basis layer of one forward pass reads: the coefficients `[B, N]` and the
    formulation of each kind of layer."""

    def __init__(self):
        self.alpha = None
        self.plan = dict(DEFAULT_PLAN)


def _mixed(y, alpha, groups, n):
    """`y[B, groups * N * per, H, W]` (the bank's outputs, basis-major inside each group)
    mixed by `alpha[B, N]` into `[B, groups * per, H, W]`, in `y`'s memory layout."""
    b, _, h, w = y.shape
    y = y.unflatten(1, (groups, n, -1))
    return (y * alpha.view(b, 1, n, 1, 1, 1)).sum(2).flatten(1, 2)


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
        pointwise = conv.kernel_size == (1, 1) and conv.groups == 1
        self.pointwise = pointwise and conv.stride == (1, 1) and conv.padding == (0, 0)
        depthwise = conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1
        self.kind = "pointwise" if self.pointwise else "depthwise" if depthwise else "dense"

    def _kernels(self, alpha):
        n = self.weight.shape[0]
        return (alpha @ self.weight.reshape(n, -1)).reshape(-1, *self.weight.shape[1:])

    def _bias(self, alpha, y):
        if self.bias is None:
            return y
        return y + (alpha @ self.bias).view(y.shape[0], -1, 1, 1)

    def forward(self, x):
        alpha = self.ctx.alpha.to(x.dtype)
        kind = "vector" if self.pointwise and x.shape[-2:] == (1, 1) else self.kind
        return getattr(self, "_" + self.ctx.plan[kind])(x, alpha)

    def _grouped(self, x, alpha):
        b, c, h, w = x.shape
        kernel = self._kernels(alpha).flatten(0, 1)
        y = F.conv2d(
            x.reshape(1, b * c, h, w),
            kernel,
            None,
            self.stride,
            self.padding,
            self.dilation,
            self.groups * b,
        )
        return self._bias(alpha, y.reshape(b, -1, y.shape[-2], y.shape[-1]))

    def _mix(self, x, alpha):
        n, out, per_in, kh, kw = self.weight.shape
        g = self.groups
        # Filters ordered group, basis, output-in-group: one grouped convolution runs all N.
        bank = self.weight.view(n, g, out // g, per_in, kh, kw).transpose(0, 1)
        y = F.conv2d(x, bank.reshape(-1, per_in, kh, kw), None, self.stride, self.padding, self.dilation, g)
        return self._bias(alpha, _mixed(y, alpha, g, n))

    def _shift(self, x, alpha):
        b, c, h, w = x.shape
        _, _, _, kh, kw = self.weight.shape
        taps = self._kernels(alpha).view(b, c, kh, kw, 1, 1)
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        xp = F.pad(x, (pw, pw, ph, ph))
        ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        y = None
        for i in range(kh):
            for j in range(kw):
                window = xp[:, :, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw]
                y = window * taps[:, :, i, j] if y is None else y.addcmul_(window, taps[:, :, i, j])
        return self._bias(alpha, y)

    def _bmm(self, x, alpha):
        b, c, h, w = x.shape
        kernel = self._kernels(alpha).view(b, -1, c)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            y = torch.bmm(x.permute(0, 2, 3, 1).reshape(b, h * w, c), kernel.transpose(1, 2))
            y = y.view(b, h, w, -1).permute(0, 3, 1, 2)
        else:
            y = torch.bmm(kernel, x.reshape(b, c, h * w)).view(b, -1, h, w)
        return self._bias(alpha, y)

    def _gemm(self, x, alpha):
        b = x.shape[0]
        n, out = self.weight.shape[:2]
        y = x.reshape(b, -1) @ self.weight.view(n * out, -1).t()
        y = (y.view(b, n, out) * alpha.unsqueeze(2)).sum(1)
        if self.bias is not None:
            y = y + alpha @ self.bias
        return y.view(b, out, 1, 1)


class BasisLinear(nn.Module):
    def __init__(self, linear, n, ctx):
        super().__init__()
        self.ctx = ctx
        self.weight = nn.Parameter(torch.empty(n, *linear.weight.shape))
        self.bias = nn.Parameter(torch.empty(n, linear.out_features))

    def forward(self, x):
        alpha = self.ctx.alpha.to(x.dtype)
        n, out, inp = self.weight.shape
        if self.ctx.plan["vector"] == "gemm":
            y = (x @ self.weight.view(n * out, inp).t()).view(-1, n, out)
            y = (y * alpha.unsqueeze(2)).sum(1)
        else:
            kernel = (alpha @ self.weight.view(n, -1)).view(-1, out, inp)
            y = torch.bmm(kernel, x.unsqueeze(2)).squeeze(2)
        return y + alpha @ self.bias


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


def median_seconds(fn, iters, warmup, sync=None):
    """Median wall seconds of `fn()` over `iters` calls after `warmup` untimed ones."""
    seconds = []
    for i in range(warmup + iters):
        start = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    seconds.sort()
    return seconds[len(seconds) // 2]


def choose_plan(ctx, run, iters=3, log=None):
    """The fastest formulation of each kind of layer for `run()` (a whole forward pass or
    training step), by greedy search from the CondConv plan: each kind in turn tries its
    other formulations with the rest fixed, and keeps the fastest. Sets and returns
    `ctx.plan`, with the seconds of the final plan."""
    ctx.plan = dict(DEFAULT_PLAN)
    best = median_seconds(run, iters, 1)
    for kind, options in FORMULATIONS.items():
        for option in options:
            if option == ctx.plan[kind]:
                continue
            trial = dict(ctx.plan, **{kind: option})
            previous, ctx.plan = ctx.plan, trial
            s = median_seconds(run, iters, 1)
            if log is not None:
                log(f"{kind}={option}: {s * 1000:.1f} ms (best so far {best * 1000:.1f} ms)")
            if s < best:
                best = s
            else:
                ctx.plan = previous
    return dict(ctx.plan), best


def read_state(path):
    """Tensors and metadata of a safetensors file."""
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
