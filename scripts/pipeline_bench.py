#!/usr/bin/env python3
"""torchvision's side of basis-train's pipeline benchmark.

    pipeline_bench.py FOLDER REPEAT EPOCHS [WORKERS]

ImageFolder(FOLDER) repeated REPEAT times, DataLoader(batch_size=32, num_workers=WORKERS (2),
shuffle=True), transforms RandomResizedCrop(224), RandomHorizontalFlip(), ToTensor(),
Normalize(ImageNet). Prints one JSON line: images per second of each epoch (decode +
augment + batch, the whole epoch's wall time, workers started fresh every epoch).
"""
import json
import sys
import time

import torch
from torch.utils.data import ConcatDataset, DataLoader
from torchvision import datasets, transforms


def main():
    folder, repeat, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    workers = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    transform = transforms.Compose([
        transforms.RandomResizedCrop(224),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    base = datasets.ImageFolder(folder, transform=transform)
    data = ConcatDataset([base] * repeat)
    loader = DataLoader(data, batch_size=32, shuffle=True, num_workers=workers)
    rates = []
    for _ in range(epochs):
        start = time.perf_counter()
        n = 0
        for images, labels in loader:
            n += images.shape[0]
        rates.append(n / (time.perf_counter() - start))
    print(json.dumps({"torch": torch.__version__, "images": len(data), "images_per_s": rates}))


if __name__ == "__main__":
    main()
