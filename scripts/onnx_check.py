#!/usr/bin/env python3
"""Run basis-models' ONNX exports in ONNX Runtime (CPU).

    onnx_check.py DIR   for every DIR/<case>.onnx with DIR/<case>.inputs.safetensors:
                        ONNX Runtime's outputs -> DIR/<case>.ort.safetensors; where
                        DIR/<case>.torchvision.safetensors holds a torchvision state dict
                        (`arch` in the file's metadata), torchvision's logits on the same
                        images -> DIR/<case>.ort.safetensors as `torchvision_logits`.

Run by basis-models' tests/onnx.rs with the PyTorch and ONNX Runtime that `cargo xtask
setup` installed; the Rust side compares the outputs with its own.
"""
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file, save_file


def run(folder):
    cases = sorted(p.name[: -len(".onnx")] for p in folder.glob("*.onnx"))
    for case in cases:
        inputs = load_file(str(folder / f"{case}.inputs.safetensors"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(str(folder / f"{case}.onnx"), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        feeds = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
        outputs = dict(zip(names, session.run(names, feeds)))
        result = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in outputs.items()}
        weights = folder / f"{case}.torchvision.safetensors"
        if weights.exists():
            with safe_open(str(weights), "pt") as f:
                arch = f.metadata()["arch"]
                classes = int(f.metadata()["classes"])
            model = getattr(torchvision.models, arch)(weights=None, num_classes=classes).eval()
            model.load_state_dict(load_file(str(weights)), strict=True)
            with torch.no_grad():
                result["torchvision_logits"] = model(inputs["images"])
        save_file(result, str(folder / f"{case}.ort.safetensors"))
        print(f"{case}: {', '.join(f'{k} {list(v.shape)}' for k, v in result.items())}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    run(Path(sys.argv[1]))
