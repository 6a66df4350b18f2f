//! ONNX Runtime beside ours: `basisnet benchmark --save-onnx` writes the graphs of the
//! model it times (the same weights and batch), `scripts/onnx_bench.py` times them in ONNX
//! Runtime (CPU, fp32, the same threads), alternating rounds as the inference rows do.

use super::inference::{number, round_ratios, side};
use super::{json_of, BenchArgs, Row};
use crate::setup;
use anyhow::{bail, Result};
use serde_json::json;
use std::path::Path;
use std::process::Command;

/// `(ours, label)`: the models with an ONNX export.
const MODELS: [(&str, &str); 2] = [
    ("mobilenet-v3-large", "MobileNetV3-Large (static)"),
    ("basisnet-mv3", "basisnet-mv3 (both stages, no exit)"),
];

/// The ONNX Runtime rows: a markdown table and the comparison rows.
pub(super) fn onnx_runtime(
    scripts: &Path,
    binary: &Path,
    torch: &setup::Torch,
    args: &BenchArgs,
    out: &Path,
) -> Result<(String, Vec<Row>)> {
    let threads = std::env::var("BASISNET_BENCH_THREADS").unwrap_or_else(|_| "2".into());
    let rounds = args.rounds.max(1);
    let iters = args.iters.to_string();
    let mut table = format!(
        "CPU, {threads} threads, fp32. `basisnet benchmark --save-onnx` writes the graphs of the model it times (`basisnet export`'s default graphs: dynamic batch, batch norm folded; the specialist as a `Scan` over the batch, each image's kernels synthesized for the batch by one `MatMul` per layer around it and applied by plain `Conv`/`Gemm`), `scripts/onnx_bench.py` times them in ONNX Runtime (all graph optimizations, sequential execution, the same threads); a BasisNet batch there includes PyTorch's antialiased resize for the lightweight model. {rounds} round(s) alternating the sides; medians, and the median and range of the per-round ratios (ours / ONNX Runtime).\n\n| model | batch | logit gap | ours images/s | ONNX Runtime images/s | ratio (median) | ratio range | ours peak MiB | ONNX Runtime peak MiB |\n|---|---|---|---|---|---|---|---|---|\n"
    );
    let mut rows = Vec::new();
    for (model, label) in MODELS {
        for &batch in &args.batches {
            let (state, graphs) = (out.join("onnx-state.safetensors"), out.join("onnx-graphs"));
            let _ = std::fs::remove_file(&state);
            let _ = std::fs::remove_dir_all(&graphs);
            eprintln!("bench: {model} vs ONNX Runtime, batch {batch}");
            let run_ours = |save: bool| {
                let mut cmd = Command::new(binary);
                cmd.args(["benchmark", "--model", model, "--json", "--device", "cpu"])
                    .args(["--batch", &batch.to_string(), "--precision", "f32"])
                    .args(["--iters", &iters])
                    .env("OMP_NUM_THREADS", &threads);
                if save {
                    cmd.arg("--save-state").arg(&state);
                    cmd.arg("--save-onnx").arg(&graphs);
                }
                super::same_allocator(&mut cmd);
                json_of(
                    &mut cmd,
                    &format!("basisnet benchmark --model {model} --save-onnx"),
                )
            };
            let run_theirs = || {
                let mut py = Command::new("python3");
                py.arg(scripts.join("onnx_bench.py"))
                    .arg(&graphs)
                    .arg(&state)
                    .args([&batch.to_string(), &iters, &threads])
                    .env("OMP_NUM_THREADS", &threads);
                torch.apply_env(&mut py);
                super::same_allocator(&mut py);
                json_of(
                    &mut py,
                    &format!("scripts/onnx_bench.py ({model}, batch {batch})"),
                )
            };
            let mut ours = vec![run_ours(true)?];
            let mut theirs = vec![run_theirs()?];
            for _ in 1..rounds {
                ours.push(run_ours(false)?);
                theirs.push(run_theirs()?);
            }
            let _ = std::fs::remove_file(&state);
            let _ = std::fs::remove_dir_all(&graphs);
            let gap = number(&theirs[0], "logit_gap_fp32");
            if gap.is_nan() || gap >= 1e-4 {
                bail!("{model}, batch {batch}: ONNX Runtime's logits differ from ours by {gap:e} of their largest magnitude (expected < 1e-4): no timing reported");
            }
            let (ratios, ratio, lo, hi) = round_ratios(&ours, &theirs);
            let (o, t) = (side(&ours, "images_per_s"), side(&theirs, "images_per_s"));
            let line = format!(
                "| {label} | {batch} | {gap:.1e} | {o:.1} | {t:.1} | {ratio:.2}x | {lo:.2}-{hi:.2}x | {:.0} | {:.0} |\n",
                side(&ours, "peak_rss_mib"),
                side(&theirs, "peak_rss_mib"),
            );
            eprint!("bench: {line}");
            table.push_str(&line);
            rows.push(Row {
                name: format!(
                    "ONNX Runtime: {label}, batch {batch}, f32 (vs ONNX Runtime {})",
                    theirs[0]["onnxruntime"].as_str().unwrap_or("?")
                ),
                ours: o,
                pytorch: t,
                ratio,
                extra: json!({
                    "kind": "onnx_runtime",
                    "batch": batch,
                    "rounds": ratios.len(),
                    "ratio_min": lo,
                    "ratio_max": hi,
                    "ratios": ratios,
                    "logit_gap_fp32": gap,
                }),
            });
        }
    }
    Ok((table, rows))
}
