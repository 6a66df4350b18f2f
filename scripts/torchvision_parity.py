#!/usr/bin/env python3
"""Parity of basis-models' MobileNets with torchvision 0.28, both ways.

    torchvision_parity.py export DIR   torchvision models -> DIR/<case>.weights.safetensors
                                       and DIR/<case>.io.safetensors (input, logits)
    torchvision_parity.py check DIR    DIR/<case>.weights.safetensors written by Rust load
                                       into torchvision (strict) and reproduce
                                       DIR/<case>.io.safetensors's logits within 1e-4

Cases are named ARCH-WIDTH-CLASSES-RESOLUTION, for example mobilenet_v3_large-1.0-1000-224.
Run by basis-models' tests/torchvision_parity.rs with the PyTorch that `cargo xtask setup`
installed. Batch norm statistics are randomized so evaluation mode is really exercised.
"""
import sys
from pathlib import Path

import torch
import torchvision
from safetensors.torch import load_file, save_file

CASES = [
    ("mobilenet_v2", 1.0, 1000, 224),
    ("mobilenet_v2", 0.5, 10, 96),
    ("mobilenet_v3_large", 1.0, 1000, 224),
    ("mobilenet_v3_large", 0.75, 100, 128),
    ("mobilenet_v3_small", 1.0, 1000, 224),
    ("mobilenet_v3_small", 0.5, 10, 64),
]
TOLERANCE = 1e-4


def name(arch, width, classes, resolution):
    return f"{arch}-{width}-{classes}-{resolution}"


def build(arch, width, classes):
    return getattr(torchvision.models, arch)(weights=None, width_mult=width, num_classes=classes).eval()


def randomize(model, batches_tracked):
    """Batch-norm statistics and affine terms away from their initial values (so evaluation
    mode is really exercised), linear layers at a scale that keeps the logits near 1."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(batches_tracked)
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0.0, 0.05)
                m.bias.normal_(0.0, 0.05)


def export(out):
    out.mkdir(parents=True, exist_ok=True)
    for i, (arch, width, classes, resolution) in enumerate(CASES):
        torch.manual_seed(i)
        model = build(arch, width, classes)
        randomize(model, i + 1)
        with torch.no_grad():
            x = torch.randn(2, 3, resolution, resolution)
            logits = model(x)
        case = name(arch, width, classes, resolution)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / f"{case}.weights.safetensors"))
        save_file({"input": x, "logits": logits}, str(out / f"{case}.io.safetensors"))
        print(f"exported {case}")


def check(folder):
    worst = 0.0
    for arch, width, classes, resolution in CASES:
        case = name(arch, width, classes, resolution)
        model = build(arch, width, classes)
        model.load_state_dict(load_file(str(folder / f"{case}.weights.safetensors")), strict=True)
        io = load_file(str(folder / f"{case}.io.safetensors"))
        with torch.no_grad():
            logits = model(io["input"])
        diff = (logits - io["logits"]).abs().max().item()
        worst = max(worst, diff)
        print(f"{case}: max |torchvision - basis-models| = {diff:.3e}")
        if not diff <= TOLERANCE:
            sys.exit(f"{case}: logits differ by {diff:.3e} > {TOLERANCE}")
    print(f"all {len(CASES)} cases within {TOLERANCE} (worst {worst:.3e})")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("export", "check"):
        sys.exit(__doc__)
    {"export": export, "check": check}[sys.argv[1]](Path(sys.argv[2]))
