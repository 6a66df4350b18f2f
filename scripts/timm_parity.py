#!/usr/bin/env python3
"""timm's MobileNets as pretrained weights for basis-models.

    timm_parity.py DIR   timm models (random weights, no download) ->
                         DIR/<model>.weights.safetensors (timm's state dict, timm's names)
                         and DIR/<model>.io.safetensors (input, logits)

Models: mobilenetv3_large_100, mobilenetv3_small_100, mobilenetv2_100 (timm 1.0.31, the
architectures of torchvision's mobilenet_v3_large, mobilenet_v3_small, mobilenet_v2), and
torchvision's mobilenet_v3_small as torchvision_mobilenet_v3_small (the same start from
torchvision's names), and mobilenetv3_small_100-gray-7 (one input channel, 7 classes: a start
for the Fashion-MNIST presets' specialist whose classifier must start new).
Batch-norm statistics and affine terms are randomized so evaluation mode is exercised.
Run by basis-models' tests/pretrained.rs with the PyTorch and timm that `cargo xtask setup`
installed; the Rust side renames the tensors and checks its logits within 1e-4.
"""
import sys
from pathlib import Path

import timm
import torch
import torchvision
from safetensors.torch import save_file
from torchvision_parity import randomize

MODELS = [
    "mobilenetv3_large_100",
    "mobilenetv3_small_100",
    "mobilenetv2_100",
    "torchvision_mobilenet_v3_small",
    "mobilenetv3_small_100-gray-7",
]
RESOLUTION = 96


def export(out):
    out.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(MODELS):
        torch.manual_seed(i)
        if name.startswith("torchvision_"):
            model = torchvision.models.mobilenet_v3_small(weights=None).eval()
        elif name.endswith("-gray-7"):
            model = timm.create_model(name.split("-")[0], pretrained=False, in_chans=1, num_classes=7).eval()
        else:
            model = timm.create_model(name, pretrained=False).eval()
        randomize(model, i + 1)
        with torch.no_grad():
            # MobileNetV3's head convolution is torchvision's first linear layer: the same
            # scale as torchvision_parity.py gives it keeps the logits near 1.
            head = getattr(model, "conv_head", None)
            if head is not None and head.bias is not None:
                head.weight.normal_(0.0, 0.05)
                head.bias.normal_(0.0, 0.05)
            x = torch.randn(2, model.conv_stem.in_channels if hasattr(model, "conv_stem") else 3, RESOLUTION, RESOLUTION)
            logits = model(x)
            # Random MobileNetV3-Large features reach the hundreds: scale the classifier so
            # the logits spread about 1 and the 1e-4 tolerance means the same everywhere.
            spread = logits.std().item()
            last = model.classifier if isinstance(model.classifier, torch.nn.Linear) else model.classifier[-1]
            last.weight.div_(spread)
            last.bias.div_(spread)
            logits = model(x)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / f"{name}.weights.safetensors"))
        save_file({"input": x, "logits": logits}, str(out / f"{name}.io.safetensors"))
        print(f"exported {name}: logits spread {logits.std().item():.3f}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    export(Path(sys.argv[1]))
