"""PyTorch eager reference of one BasisNet training step, for `cargo bench -p basis-train
--bench train_step`.

The model is `basisnet-mv3` written the way a PyTorch user writes it: torchvision's
MobileNetV3-Large as the lightweight model plus a linear coefficient head, and a second
MobileNetV3-Large whose every convolution and linear layer holds N basis kernels that are
blended per sample from the coefficients (the CondConv formulation: kernels
`alpha @ bank`, then one grouped convolution over the batch, one batched matmul for
linear layers). The loss is the joint loss of basis-train: label-smoothed cross-entropy
on the specialist plus `light_weight` times the same on the lightweight model. The
optimizer is torch.optim.SGD (momentum, Nesterov, no weight decay on batch norm and
biases).

Usage: basisnet_train_bench.py STATE.safetensors STEPS THREADS

STATE holds the weights the Rust side saved (`lightweight.*`, `specialist.*`) and the
batch (`batch.images`, `batch.labels`) plus the hyper-parameters as metadata. Prints one
JSON object: the first step's loss (computed before any update, for the parity check),
and the seconds of each timed step.
"""

import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from basisnet_torch import BasisNet, read_state  # noqa: E402


def main():
    path, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(threads)
    tensors, meta = read_state(path)
    images = tensors.pop("batch.images")
    labels = tensors.pop("batch.labels")
    n = int(meta["num_bases"])
    model = BasisNet(
        "mobilenet_v3_large",
        int(meta["classes"]),
        n,
        int(meta["light_resolution"]),
        float(meta["temperature"]),
    )
    model.load_state_dict(tensors, strict=True)
    model.train()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if name.endswith("bias") or p.dim() <= 1 else decay).append(p)
    opt = torch.optim.SGD(
        [
            {"params": decay, "weight_decay": float(meta["weight_decay"])},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=float(meta["lr"]),
        momentum=float(meta["momentum"]),
        nesterov=True,
    )
    smoothing, light_weight = float(meta["label_smoothing"]), float(meta["light_weight"])

    def step():
        light, special = model(images)
        loss = F.cross_entropy(special, labels, label_smoothing=smoothing)
        loss = loss + light_weight * F.cross_entropy(light, labels, label_smoothing=smoothing)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
        return loss.item()

    first = step()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"first_loss": first, "seconds": seconds}))


if __name__ == "__main__":
    main()
