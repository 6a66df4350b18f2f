#!/usr/bin/env python3
"""ONNX Runtime's throughput on the graphs `basisnet benchmark --save-onnx` wrote.

    onnx_bench.py DIR STATE BATCH ITERS THREADS

DIR holds static.onnx, or lightweight.onnx and specialist.onnx (basisnet-mv3); STATE is
the `--save-state` file of the same run (the batch, `batch.images`, and our fp32 logits,
`batch.logits`). A BasisNet batch is timed whole: the antialiased bilinear resize to the
lightweight resolution (PyTorch, as a Python deployment would do it), the lightweight
graph, the specialist graph with its coefficients. Prints one JSON object: images_per_s,
ms_per_batch (medians over ITERS batches after 2 untimed ones), peak_rss_mib and
logit_gap_fp32 (max |ONNX Runtime - ours| over max |ours|).
"""
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import onnxruntime as ort
import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def session(path, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main(folder, state, batch, iters, threads):
    torch.set_num_threads(threads)
    tensors = load_file(str(state))
    images, ours = tensors["batch.images"][:batch], tensors["batch.logits"][:batch]
    if (folder / "static.onnx").exists():
        static = session(folder / "static.onnx", threads)
        x = images.numpy()

        def run():
            return static.run(["logits"], {"images": x})[0]
    else:
        light = session(folder / "lightweight.onnx", threads)
        special = session(folder / "specialist.onnx", threads)
        side = int(light.get_modelmeta().custom_metadata_map["lightweight_resolution"])
        x = images.numpy()

        def run():
            small = F.interpolate(images, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
            _, alpha = light.run(["logits", "coefficients"], {"images": small.numpy()})
            return special.run(["logits"], {"images": x, "coefficients": alpha})[0]

    logits = torch.from_numpy(run())
    gap = ((logits - ours).abs().max() / ours.abs().max()).item()
    run()
    seconds = []
    for _ in range(iters):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    ms = statistics.median(seconds) * 1e3
    print(json.dumps({
        "images_per_s": batch / (ms / 1e3),
        "ms_per_batch": ms,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "logit_gap_fp32": gap,
        "onnxruntime": ort.__version__,
    }))


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
