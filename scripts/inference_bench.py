#!/usr/bin/env python3
"""PyTorch eager side of `cargo xtask bench`'s end-to-end inference rows.

    inference_bench.py STATE.safetensors MODEL BATCH PRECISION DEVICE ITERS WARMUP THREADS

STATE is what `basisnet benchmark --save-state` wrote: the weights (basisnet-rs names,
which are torchvision's) and the batch, plus the early-exit threshold. MODEL is
MobilenetV3Large (torchvision's `mobilenet_v3_large`), BasisnetMv3 or BasisnetMv3Exit
(`basisnet_torch.BasisNet`, CondConv-style grouped convolutions). PRECISION is f32 or
bf16 (weights and activations cast, as the Rust side does). PyTorch gets its best fp32
layout: channels_last for the static network where it is faster (measured: about 1.5x at
batch 32 on this CPU), and both layouts are tried for the BasisNet, the faster kept.
Before timing, the fp32 logits on the CPU are compared with the Rust side's
(`batch.logits`): `logit_gap_fp32` is max |ours - theirs| / max |ours|. Prints one JSON
object: images/s, ms per batch (median), peak resident memory, the layout used, and that
gap.
"""

import json
import os
import sys
import time

import torch
from torchvision.models import mobilenet_v3_large

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from basisnet_torch import BasisNet, read_state  # noqa: E402


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return None


def timed(fn, images, iters, warmup, device):
    seconds = []
    with torch.no_grad():
        for i in range(warmup + iters):
            start = time.perf_counter()
            fn(images)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                seconds.append(time.perf_counter() - start)
    seconds.sort()
    return seconds[len(seconds) // 2]


def main():
    path, model_name, batch, precision, device, iters, warmup, threads = sys.argv[1:9]
    batch, iters, warmup = int(batch), int(iters), int(warmup)
    torch.set_num_threads(int(threads))
    device = torch.device(device)
    tensors, meta = read_state(path)
    images = tensors.pop("batch.images")[:batch]
    reference = tensors.pop("batch.logits", None)
    if model_name == "MobilenetV3Large":
        model = mobilenet_v3_large()
        model.load_state_dict(tensors, strict=True)
        fn = model
    else:
        model = BasisNet("mobilenet_v3_large", 1000, 8, 128, 1.0)
        model.load_state_dict(tensors, strict=True)
        if model_name == "BasisnetMv3Exit":
            threshold = float(meta["threshold"])

            def fn(x):
                return model.early_exit(x, threshold)[0]

        else:

            def fn(x):
                return model(x)[1]

    model.eval()
    gap = None
    if reference is not None:
        with torch.no_grad():
            diff = (fn(images).float() - reference).abs().max().item()
        gap = diff / max(reference.abs().max().item(), 1e-30)
    model.to(device)
    images = images.to(device)
    if precision == "bf16":
        model.to(torch.bfloat16)
        images = images.to(torch.bfloat16)
    # The basis banks are 5-D (`[N, out, in, kh, kw]`): only the static part of a
    # BasisNet (its lightweight model) takes a memory format.
    static_part = model if model_name == "MobilenetV3Large" else model.lightweight
    best = None
    for layout in ("channels_last", "contiguous"):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        static_part.to(memory_format=fmt)
        x = images.contiguous(memory_format=fmt)
        s = timed(fn, x, iters, warmup, device)
        if best is None or s < best[0]:
            best = (s, layout)
    seconds, layout = best
    specialist_images = 0
    if model_name == "BasisnetMv3Exit":
        specialist_images = model.early_exit(images, threshold)[1]
    elif model_name == "BasisnetMv3":
        specialist_images = batch
    print(
        json.dumps(
            {
                "images_per_s": batch / seconds,
                "ms_per_batch": 1000 * seconds,
                "peak_rss_mib": peak_rss_mib(),
                "layout": layout,
                "device": str(device),
                "logit_gap_fp32": gap,
                "specialist_images": specialist_images,
            }
        )
    )


if __name__ == "__main__":
    main()
