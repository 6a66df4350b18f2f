#!/usr/bin/env python3
"""torchvision's evaluation transform on the foolbox ImageNet photos, for basis-train's
tests/transform_parity.rs.

    transform_parity.py FOLDER OUT.safetensors

For each image of ImageFolder(FOLDER), in ImageFolder's order: PIL decode, RGB,
Resize(256) (bilinear, antialiased), CenterCrop(224), as uint8 HWC. Saved as one
[N, 224, 224, 3] tensor "images".
"""
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from torchvision import datasets, transforms


def main():
    folder, out = sys.argv[1], sys.argv[2]
    transform = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
    data = datasets.ImageFolder(folder, transform=transform)
    images = [torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy()) for img, _ in data]
    save_file({"images": torch.stack(images)}, out)
    print(len(images))


if __name__ == "__main__":
    main()
