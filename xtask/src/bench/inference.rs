//! The end-to-end inference comparison of `cargo xtask bench`: `basisnet benchmark` side by
//! side with `scripts/inference_bench.py` (the strongest PyTorch version: both layouts,
//! `inference_mode`, bf16 cast or autocast, per-kind basis-layer formulations, and
//! `torch.compile` rows for the static network and the BasisNet), on the same weights and batch, in alternating
//! rounds; each row reports the median of each side and the median and range of the
//! per-round ratios.

use super::{json_of, BenchArgs, Row};
use crate::setup;
use anyhow::{bail, Result};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

/// One row of the comparison: our `basisnet benchmark --model` and the peer's model name.
struct Model {
    ours: &'static str,
    theirs: &'static str,
    label: &'static str,
    peer: &'static str,
}

const MODELS: [Model; 5] = [
    Model {
        ours: "mobilenet-v3-large",
        theirs: "MobilenetV3Large",
        label: "MobileNetV3-Large (static)",
        peer: "torchvision eager",
    },
    Model {
        ours: "mobilenet-v3-large",
        theirs: "MobilenetV3LargeCompiled",
        label: "MobileNetV3-Large (static)",
        peer: "torchvision + torch.compile",
    },
    Model {
        ours: "basisnet-mv3",
        theirs: "BasisnetMv3",
        label: "basisnet-mv3, no exit",
        peer: "fastest PyTorch BasisNet",
    },
    Model {
        ours: "basisnet-mv3",
        theirs: "BasisnetMv3Compiled",
        label: "basisnet-mv3, no exit",
        peer: "fastest PyTorch BasisNet + torch.compile",
    },
    Model {
        ours: "basisnet-mv3-exit",
        theirs: "BasisnetMv3Exit",
        label: "basisnet-mv3, 50% exit",
        peer: "fastest PyTorch BasisNet",
    },
];

/// Median of `values` (the mean of the middle two for an even count).
pub(super) fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

pub(super) fn number(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

/// The median of `key` over one side's rounds.
pub(super) fn side(runs: &[Value], key: &str) -> f64 {
    median(&runs.iter().map(|v| number(v, key)).collect::<Vec<_>>())
}

/// Per-round throughput ratios (ours / theirs), their median, lowest and highest.
pub(super) fn round_ratios(ours: &[Value], theirs: &[Value]) -> (Vec<f64>, f64, f64, f64) {
    let ratios: Vec<f64> = ours
        .iter()
        .zip(theirs)
        .map(|(o, t)| number(o, "images_per_s") / number(t, "images_per_s"))
        .collect();
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let ratio = median(&ratios);
    (ratios, ratio, lo, hi)
}

/// Whether `basisnet` sees a CUDA device (then every row runs there).
fn sees_cuda(binary: &Path, threads: &str) -> bool {
    Command::new(binary)
        .args(["benchmark", "--model", "mobilenet-v3-large", "--batch", "1"])
        .args(["--iters", "1", "--warmup", "0", "--json"])
        .env("OMP_NUM_THREADS", threads)
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
        .and_then(|v| v["device"].as_str().map(|d| d.starts_with("cuda")))
        .unwrap_or(false)
}

/// The end-to-end inference rows: a markdown table and the comparison rows.
pub(super) fn inference(
    scripts: &Path,
    binary: &Path,
    torch: &setup::Torch,
    args: &BenchArgs,
    out: &Path,
) -> Result<(String, Vec<Row>)> {
    let iters = args.iters;
    let threads = std::env::var("BASISNET_BENCH_THREADS").unwrap_or_else(|_| "2".into());
    let cuda = sees_cuda(binary, &threads);
    let device = if cuda { "cuda" } else { "cpu" };
    let rounds = args.rounds.max(1);
    let mut table = format!(
        "Device: {device}{}. Each side of each row runs in its own processes on the same weights and batch, {rounds} round(s) alternating the sides; images/s and peak memory are each side's median over the rounds, the ratio column the median of the per-round ratios (ours / PyTorch) with their range. The PyTorch side runs under `inference_mode` and keeps the fastest of: both memory layouts, bf16 cast or autocast, and for the BasisNet the fastest formulation of each kind of basis layer (chosen in the first round, reused after; `plan`); `torch.compile` rows compile the static network in both layouts and the BasisNet in the layout and plan its eager search prefers (bf16: the cast model), the first round's compile time in the choice column; the logit gap is its eager fp32 logits against ours.\n\n| model | PyTorch | batch | precision | fp32 logit gap | ours ms/batch | PyTorch ms/batch | ours images/s | PyTorch images/s | ratio (median) | ratio range | ours peak MiB | PyTorch peak MiB | PyTorch choice | through the specialist (ours / PyTorch) | MAdds/image |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        if cuda { String::new() } else { format!(", {threads} threads") },
    );
    let mut rows = Vec::new();
    for model in MODELS {
        if args.skip_compile && model.theirs.ends_with("Compiled") {
            continue;
        }
        for &batch in &args.batches {
            for precision in ["f32", "bf16"] {
                if model.ours == "basisnet-mv3-exit" && batch == 1 {
                    continue; // one image either exits or not: the other two rows.
                }
                let state = out.join("state.safetensors");
                let _ = std::fs::remove_file(&state);
                eprintln!(
                    "bench: {} vs {}, batch {batch}, {precision}",
                    model.label, model.peer
                );
                let run_ours = |save: bool| -> Result<Value> {
                    let mut cmd = Command::new(binary);
                    cmd.args(["benchmark", "--model", model.ours, "--json"])
                        .args(["--device", device, "--batch", &batch.to_string()])
                        .args(["--precision", precision, "--iters", &iters.to_string()])
                        .env("OMP_NUM_THREADS", &threads);
                    super::same_allocator(&mut cmd);
                    if save {
                        cmd.arg("--save-state").arg(&state);
                    }
                    json_of(
                        &mut cmd,
                        &format!(
                            "basisnet benchmark --model {} --batch {batch} --precision {precision}",
                            model.ours
                        ),
                    )
                };
                let run_theirs = |choice: Option<&Value>| -> Result<Value> {
                    let mut py = Command::new("python3");
                    py.arg(scripts.join("inference_bench.py"))
                        .arg(&state)
                        .args([model.theirs, &batch.to_string(), precision, device])
                        .args([&iters.to_string(), "2", &threads])
                        .env("OMP_NUM_THREADS", &threads);
                    if let Some(choice) = choice {
                        py.arg(choice.to_string());
                    }
                    torch.apply_env(&mut py);
                    super::same_allocator(&mut py);
                    json_of(
                        &mut py,
                        &format!(
                            "scripts/inference_bench.py {} {batch} {precision}",
                            model.theirs
                        ),
                    )
                };
                // Rounds alternate the sides (ours, PyTorch, ours, ...), so a slow spell of a
                // shared machine lands on both.
                let mut ours = vec![run_ours(true)?];
                let mut theirs = vec![run_theirs(None)?];
                let choice = theirs[0]["choice"].clone();
                for _ in 1..rounds {
                    ours.push(run_ours(false)?);
                    if choice.is_null() {
                        break;
                    }
                    theirs.push(run_theirs(Some(&choice))?);
                }
                let _ = std::fs::remove_file(&state);
                let first = &theirs[0];
                let label = format!(
                    "inference: {}, batch {batch}, {precision} (vs {})",
                    model.label, model.peer
                );
                if first["images_per_s"].is_null() {
                    let why = first["compile_error"].as_str().unwrap_or("no reason given");
                    table.push_str(&format!(
                        "| {} | {} | {batch} | {precision} | - | - | - | - | - | - | - | - | - | torch.compile failed: {} | - | - |\n",
                        model.label,
                        model.peer,
                        why.replace('|', "/")
                    ));
                    continue;
                }
                let gap = number(first, "logit_gap_fp32");
                if gap.is_nan() || gap >= 1e-4 {
                    bail!(
                        "{label}: PyTorch's fp32 logits differ from ours by {gap:e} of their largest magnitude (expected < 1e-4): not the same model, no timing reported"
                    );
                }
                let (ratios, ratio, lo, hi) = round_ratios(&ours, &theirs);
                let (o, t) = (side(&ours, "images_per_s"), side(&theirs, "images_per_s"));
                let plan = describe(&choice);
                let compile = first["compile_seconds"]
                    .as_f64()
                    .map(|s| format!(", compiled in {s:.0} s"))
                    .unwrap_or_default();
                let line = format!(
                    "| {} | {} | {batch} | {precision} | {gap:.1e} | {:.2} | {:.2} | {o:.1} | {t:.1} | {ratio:.2}x | {lo:.2}-{hi:.2}x | {:.0} | {:.0} | {plan}{compile} | {} / {} | {:.1}M |\n",
                    model.label,
                    model.peer,
                    side(&ours, "ms_per_batch"),
                    side(&theirs, "ms_per_batch"),
                    side(&ours, "peak_rss_mib"),
                    side(&theirs, "peak_rss_mib"),
                    ours[0]["specialist_images"],
                    first["specialist_images"],
                    number(&ours[0], "madds") / 1e6,
                );
                // Each row as it finishes, so an interrupted run still shows what it measured.
                eprint!("bench: {line}");
                table.push_str(&line);
                rows.push(Row {
                    name: label,
                    ours: o,
                    pytorch: t,
                    ratio,
                    extra: json!({
                        "kind": "inference",
                        "batch": batch,
                        "precision": precision,
                        "device": ours[0]["device"],
                        "rounds": ratios.len(),
                        "ratio_min": lo,
                        "ratio_max": hi,
                        "ratios": ratios,
                        "ours_ms_per_batch": side(&ours, "ms_per_batch"),
                        "pytorch_ms_per_batch": side(&theirs, "ms_per_batch"),
                        "ours_peak_rss_mib": side(&ours, "peak_rss_mib"),
                        "pytorch_peak_rss_mib": side(&theirs, "peak_rss_mib"),
                        "pytorch_choice": choice,
                        "pytorch_compile_seconds": first["compile_seconds"],
                        "logit_gap_fp32": gap,
                        "ours_specialist_images": ours[0]["specialist_images"],
                        "pytorch_specialist_images": first["specialist_images"],
                        "params": ours[0]["params"],
                        "madds": ours[0]["madds"],
                    }),
                });
            }
        }
    }
    Ok((table, rows))
}

/// The peer's choice in a table cell: layout, precision mode, and the basis-layer plan.
fn describe(choice: &Value) -> String {
    let mut parts = vec![
        choice["layout"].as_str().unwrap_or("?").to_string(),
        choice["mode"].as_str().unwrap_or("?").to_string(),
    ];
    if let Some(plan) = choice["plan"].as_object() {
        parts.extend(
            plan.iter()
                .map(|(kind, f)| format!("{kind} {}", f.as_str().unwrap_or("?"))),
        );
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_choices_read_as_the_report_says() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        let choice = json!({"layout": "channels_last", "mode": "cast",
            "plan": {"dense": "grouped", "vector": "gemm"}});
        assert_eq!(
            describe(&choice),
            "channels_last, cast, dense grouped, vector gemm"
        );
    }
}
