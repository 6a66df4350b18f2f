#!/usr/bin/env python3
"""PyTorch side of `cargo xtask bench`'s end-to-end inference rows: the strongest version a
competent PyTorch user runs.

    inference_bench.py STATE.safetensors MODEL BATCH PRECISION DEVICE ITERS WARMUP THREADS [CHOICE]

STATE is what `basisnet benchmark --save-state` wrote: the weights (basisnet-rs names,
which are torchvision's) and the batch, plus the early-exit threshold. MODEL is
MobilenetV3Large (torchvision's `mobilenet_v3_large`, eager), BasisnetMv3 or BasisnetMv3Exit
(`basisnet_torch.BasisNet`), or MobilenetV3LargeCompiled / BasisnetMv3Compiled: under
`torch.compile` with Inductor's `freezing` on (the static network in both layouts; the
BasisNet in the layout and plan the eager search prefers; bf16 compiles the cast model). PRECISION is f32 or bf16. Everything
runs under `torch.inference_mode()`.

What is tried, the fastest kept (its median over ITERS batches after WARMUP):
- both memory layouts (channels_last and contiguous);
- bf16 two ways: weights and activations cast (as the Rust side does) and fp32 weights
  under `torch.autocast`;
- for the BasisNet, the formulation of each kind of basis layer (`choose_plan`: CondConv's
  grouped convolutions, the bank's outputs mixed, shifted multiply-adds for depthwise,
  `torch.bmm`, one GEMM over all banks for linear and squeeze-excite layers).
CHOICE (JSON, printed by an earlier run as `choice`) skips the search and runs that layout,
precision mode and plan: later rounds of the same row reuse the first round's choice.

Before timing, the fp32 logits are compared with the Rust side's (`batch.logits`):
`logit_gap_fp32` is max |ours - theirs| / max |ours|, with the plan the search kept.
Prints one JSON object: images/s, ms per batch (median), peak resident memory, the choice,
that gap, and for the compiled model the seconds compiling took (or why it failed).
"""

import json
import os
import sys
import time

import torch
from torchvision.models import mobilenet_v3_large

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from basisnet_torch import BasisNet, choose_plan, median_seconds, read_state  # noqa: E402

LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return None


def log(text):
    print(f"inference_bench: {text}", file=sys.stderr)


def main():
    path, model_name, batch, precision, device, iters, warmup, threads = sys.argv[1:9]
    given = json.loads(sys.argv[9]) if len(sys.argv) > 9 else None
    batch, iters, warmup = int(batch), int(iters), int(warmup)
    torch.set_num_threads(int(threads))
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    tensors, meta = read_state(path)
    images = tensors.pop("batch.images")[:batch]
    reference = tensors.pop("batch.logits", None)
    static = model_name.startswith("MobilenetV3Large")
    compiled = model_name.endswith("Compiled")
    if static:
        model = mobilenet_v3_large()
        model.load_state_dict(tensors, strict=True)
        forward = model
    else:
        model = BasisNet("mobilenet_v3_large", 1000, 8, 128, 1.0)
        model.load_state_dict(tensors, strict=True)
        threshold = float(meta["threshold"]) if model_name == "BasisnetMv3Exit" else None

        def forward(x):
            return model(x)[1] if threshold is None else model.early_exit(x, threshold)[0]

    model.eval()
    model.to(device)
    images = images.to(device)

    def gap():
        if reference is None:
            return None
        with torch.inference_mode():
            x = images.float().contiguous()
            diff = (forward(x).float().cpu() - reference).abs().max().item()
        return diff / max(reference.abs().max().item(), 1e-30)

    # The basis banks are 5-D (`[N, out, in, kh, kw]`): only the static part of a
    # BasisNet (its lightweight model) takes a memory format.
    static_part = model if static else model.lightweight
    modes = ["cast", "autocast"] if precision == "bf16" else ["fp32"]
    compile_seconds, compile_error = [], None

    def fresh():
        """fp32 weights as loaded (a bf16 cast rounds them)."""
        model.to(torch.float32)
        model.load_state_dict(tensors, strict=True)

    def prepared(layout, mode, compile_it):
        """A callable running one batch in this layout and precision mode, compiled or not."""
        fmt = LAYOUTS[layout]
        static_part.to(memory_format=fmt)
        fresh()
        model.to(torch.bfloat16 if mode == "cast" else torch.float32)
        x = images.to(torch.bfloat16 if mode == "cast" else torch.float32)
        x = x.contiguous(memory_format=fmt)
        fn = forward
        if compile_it:
            # Inductor's freezing (weights as constants: batch norm folded, convolution
            # weights prepacked for oneDNN), what PyTorch recommends for CPU inference; the
            # Rust side runs its timed loop frozen too.
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
            net = torch.compile(model)

            def fn(x):
                return net(x) if static else net(x)[1]

        autocast = mode == "autocast"

        def run():
            with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=autocast):
                fn(x)
            if sync is not None:
                sync()  # CUDA runs asynchronously: the plan search times finished work

        return run

    def measure(layout, mode, plan, compile_it):
        """Median seconds of one candidate; `plan` None searches it (eager only)."""
        run = prepared(layout, mode, compile_it)
        if not static:
            if plan is None:
                choose_plan(model.ctx, run, log=lambda t: log(f"{layout} {mode} {t}"))
            else:
                model.ctx.plan = dict(plan)
            plan = dict(model.ctx.plan)
        if compile_it:
            start = time.perf_counter()
            run()  # compiles
            compile_seconds.append(time.perf_counter() - start)
        s = median_seconds(run, iters, warmup, sync)
        log(f"{layout} {mode} {plan or ''}{' compiled' if compile_it else ''}: {s * 1000:.1f} ms")
        return s, {"layout": layout, "mode": mode, "plan": plan}

    best = None
    if given is not None:
        candidates = [(given["layout"], given["mode"], given["plan"])]
    else:
        # Eager: every layout and precision mode; the BasisNet's plan is searched in the
        # first mode of each layout and reused by the other.
        candidates = []
        for layout in LAYOUTS:
            for mode in modes:
                plan = None
                if mode != modes[0]:
                    plan = "same"
                candidates.append((layout, mode, plan))
        if compiled:
            eager = {}
            for layout, mode, plan in candidates:
                if plan == "same":
                    plan = eager[layout][1]["plan"]
                eager[layout] = measure(layout, mode, plan, False)
                if best is None or eager[layout][0] < best[0]:
                    best = eager[layout]
            # Compiled: the static network in both layouts; the BasisNet in the eager winner's
            # layout and plan (each compile takes minutes). bf16 compiles the cast model.
            layouts = list(LAYOUTS) if static else [best[1]["layout"]]
            mode = "fp32" if precision != "bf16" else "cast"
            candidates = [(layout, mode, None if static else best[1]["plan"]) for layout in layouts]
            best = None
    plans = {}
    for layout, mode, plan in candidates:
        if plan == "same":
            plan = plans[layout]
        try:
            s, choice = measure(layout, mode, plan, compiled)
        except Exception as e:  # a compile failure is a row that says why
            if not compiled:
                raise
            compile_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            log(f"torch.compile failed ({layout}, {mode}): {compile_error}")
            continue
        plans[layout] = choice["plan"]
        if best is None or s < best[0]:
            best = (s, choice)
    if best is None:
        print(json.dumps({"images_per_s": None, "compile_error": compile_error}))
        return
    seconds, choice = best
    # The parity check of what is timed: the same plan, in fp32 and contiguous.
    static_part.to(memory_format=torch.contiguous_format)
    fresh()
    if not static:
        model.ctx.plan = dict(choice["plan"])
    logit_gap = gap()
    specialist_images = 0
    if model_name == "BasisnetMv3Exit":
        with torch.inference_mode():
            specialist_images = model.early_exit(images.float(), threshold)[1]
    elif model_name.startswith("BasisnetMv3"):
        specialist_images = batch
    print(
        json.dumps(
            {
                "images_per_s": batch / seconds,
                "ms_per_batch": 1000 * seconds,
                "peak_rss_mib": peak_rss_mib(),
                "layout": choice["layout"],
                "choice": choice,
                "device": str(device),
                "logit_gap_fp32": logit_gap,
                "specialist_images": specialist_images,
                "compile_seconds": max(compile_seconds) if compile_seconds else None,
                "compile_error": compile_error,
            }
        )
    )


if __name__ == "__main__":
    main()
