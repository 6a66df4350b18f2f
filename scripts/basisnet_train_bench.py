"""PyTorch side of one BasisNet training step, for `cargo bench -p basis-train --bench
train_step`: the strongest version a competent PyTorch user writes.

The model is `basisnet-mv3` (`basisnet_torch.BasisNet`): torchvision's MobileNetV3-Large as
the lightweight model plus a linear coefficient head, and a second MobileNetV3-Large whose
every convolution and linear layer holds N basis kernels blended per sample from the
coefficients, each kind of basis layer in its fastest formulation for this step
(`choose_plan`, searched in channels_last, then the plan timed in both layouts). The loss is the joint loss of basis-train: label-smoothed cross-entropy
on the specialist plus `light_weight` times the same on the lightweight model. The
optimizer is torch.optim.SGD (momentum, Nesterov, no weight decay on batch norm and
biases; `foreach` on CUDA, PyTorch's default there). MODEL `mobilenet-v3-large` is
torchvision's static MobileNetV3-Large with the specialist's loss alone;
`mobilenet-v3-large-compiled` the same step under `torch.compile` (model and loss; the
optimizer step stays eager).

Usage: basisnet_train_bench.py STATE.safetensors STEPS THREADS [DEVICE PRECISION MODEL [CHOICE]]

CHOICE (JSON, printed by an earlier run as `choice`) skips the search: later rounds reuse
the first round's layout and plan.

DEVICE is cpu (default) or cuda; PRECISION fp32 (default) or bf16 (autocast for the
forward pass and loss, fp32 weights, as basis-train's `train.precision`). The first step
(the parity check) always runs in fp32. The timed steps run in both memory layouts
(channels_last and contiguous), and the faster is reported.

STATE holds the weights the Rust side saved (`lightweight.*`, `specialist.*`) and the
batch (`batch.images`, `batch.labels`) plus the hyper-parameters as metadata. Prints one
JSON object: the first step's loss (computed before any update, for the parity check),
the seconds of each timed step, the layout and plan they ran with (`choice`), and for the
compiled model the seconds compiling took.
"""

import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from basisnet_torch import BasisNet, choose_plan, read_state  # noqa: E402
from torchvision.models import mobilenet_v3_large  # noqa: E402


def main():
    path, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    device, precision, which = (sys.argv[4:7] + ["cpu", "fp32", "basisnet-mv3"][len(sys.argv[4:7]) :])
    given = json.loads(sys.argv[7]) if len(sys.argv) > 7 else None
    compiled = which == "mobilenet-v3-large-compiled"
    device = torch.device(device)
    torch.set_num_threads(threads)
    tensors, meta = read_state(path)
    images = tensors.pop("batch.images").to(device)
    labels = tensors.pop("batch.labels").to(device)
    if which.startswith("mobilenet-v3-large"):
        net = mobilenet_v3_large(num_classes=int(meta["classes"]), dropout=0.0)

        class Static(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, x):
                return None, self.net(x)

        model = Static()
        net.load_state_dict(tensors, strict=True)
    else:
        model = BasisNet(
            "mobilenet_v3_large",
            int(meta["classes"]),
            int(meta["num_bases"]),
            int(meta["light_resolution"]),
            float(meta["temperature"]),
        )
        model.load_state_dict(tensors, strict=True)
    model.to(device)
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

    forward = model

    def step(x, autocast):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            light, special = forward(x)
            loss = F.cross_entropy(special, labels, label_smoothing=smoothing)
            if light is not None:
                loss = loss + light_weight * F.cross_entropy(
                    light, labels, label_smoothing=smoothing
                )
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
        return loss.item()

    first = step(images, False)
    static = which.startswith("mobilenet-v3-large")
    static_part = model.net if static else model.lightweight
    autocast = precision == "bf16"
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    compile_seconds = None
    if compiled:
        forward = torch.compile(model)
    best = None
    layouts = [given["layout"]] if given else ["channels_last", "contiguous"]
    for layout in layouts:
        # The basis banks are 5-D: only the static parts take a memory format.
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        static_part.to(memory_format=fmt)
        x = images.contiguous(memory_format=fmt)
        if not static and (given or best is not None):
            model.ctx.plan = dict(given["plan"] if given else best[2]["plan"])
        start = time.perf_counter()
        step(x, autocast)  # warm-up (cuDNN picks its algorithms; torch.compile compiles)
        if compiled and compile_seconds is None:
            compile_seconds = time.perf_counter() - start
        if not static and not given and best is None:
            choose_plan(model.ctx, lambda: step(x, autocast), iters=2)
        seconds = []
        for _ in range(steps):
            start = time.perf_counter()
            step(x, autocast)
            if sync is not None:
                sync()
            seconds.append(time.perf_counter() - start)
        s = sorted(seconds)[len(seconds) // 2]
        choice = {"layout": layout, "plan": None if static else dict(model.ctx.plan)}
        if best is None or s < best[0]:
            best = (s, seconds, choice)
    print(
        json.dumps(
            {
                "first_loss": first,
                "seconds": best[1],
                "layout": best[2]["layout"],
                "choice": best[2],
                "compile_seconds": compile_seconds,
            }
        )
    )


if __name__ == "__main__":
    main()
