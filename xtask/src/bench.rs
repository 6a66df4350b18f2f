//! `cargo xtask bench`: every benchmark of the project and the end-to-end inference
//! comparison with PyTorch eager, into `target/bench/report.md` and `report.json`.
//!
//! - criterion benches of basis-core (strategies) and basis-models (forward), the input
//!   pipeline (vs torchvision), the training step (vs PyTorch eager, after a loss parity
//!   check): their tables go into the report as printed; the comparisons among them add
//!   rows to `report.json`.
//! - end-to-end inference at 224 px, batch 1 and 32, fp32 and bf16: the static
//!   MobileNetV3-Large (ours vs torchvision), `basisnet-mv3` without exit and with half the
//!   batch exiting (ours vs `scripts/basisnet_torch.py`, timm-CondConv-style batching).
//!   Each side of each row runs in a fresh process (so peak memory is that row's), on the
//!   same weights and batch (`basisnet benchmark --save-state`).

use crate::{data, setup, util};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Args)]
pub struct BenchArgs {
    /// Only the end-to-end inference comparison (skip the criterion, pipeline and
    /// training-step benches).
    #[arg(long)]
    pub inference_only: bool,
    /// Timed batches per inference row and side.
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Where the report goes (default: target/bench).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Rounds of each inference row (each side once a round, alternating); each side
    /// keeps its fastest process.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Batch sizes of the inference rows.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    pub batches: Vec<usize>,
    /// Time this `basisnet` instead of building one, with the PyTorch of the `python3` on
    /// `PATH` and no setup: how the GPU kit runs the inference rows (implies
    /// `--inference-only`).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// The folder of the PyTorch peer scripts (default: the workspace's `scripts`).
    #[arg(long)]
    pub scripts: Option<PathBuf>,
}

/// One comparison row of `report.json`.
struct Row {
    name: String,
    ours: f64,
    pytorch: f64,
    extra: Value,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let root = util::workspace_root();
    let scripts = args.scripts.clone().unwrap_or_else(|| root.join("scripts"));
    if let Some(binary) = &args.binary {
        let torch = setup::Torch { python_path: None };
        let out = args.out.clone().unwrap_or_else(|| PathBuf::from("bench"));
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        let (table, rows) = inference(&scripts, binary, &torch, args, &out)?;
        let sections = vec![("End-to-end inference (224 px)".to_string(), table)];
        return write_report(&out, &rows, &sections);
    }
    let torch = setup::run(&setup::SetupArgs::default())?;
    let data_root = data::data_root()?;
    data::foolbox(&data_root)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("target").join("bench"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut sections: Vec<(String, String)> = Vec::new();
    let mut rows: Vec<Row> = Vec::new();
    let rows_file = out.join("rows.jsonl");
    let _ = std::fs::remove_file(&rows_file);

    if !args.inference_only {
        let benches = [
            (
                "basis-core: per-sample kernel strategies",
                "basis-core",
                "strategies",
            ),
            ("basis-models: forward passes", "basis-models", "forward"),
            ("basis-train: input pipeline", "basis-train", "pipeline"),
            ("basis-train: training step", "basis-train", "train_step"),
        ];
        for (title, package, bench) in benches {
            eprintln!("bench: {package} --bench {bench}");
            let mut cmd = Command::new(&cargo);
            cmd.current_dir(&root)
                .args(["bench", "-p", package, "--bench", bench])
                .env("BASISNET_DATA_DIR", &data_root)
                .env("BASISNET_BENCH_ROWS", &rows_file)
                .stderr(std::process::Stdio::inherit());
            torch.apply_env(&mut cmd);
            let output = cmd
                .output()
                .with_context(|| format!("could not start cargo bench -p {package}"))?;
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            print!("{text}");
            if !output.status.success() {
                bail!(
                    "cargo bench -p {package} --bench {bench} failed ({})",
                    output.status
                );
            }
            sections.push((title.to_string(), tables_only(&text)));
        }
        if let Ok(text) = std::fs::read_to_string(&rows_file) {
            for line in text.lines() {
                let v: Value = serde_json::from_str(line)
                    .with_context(|| format!("{}: not a JSON row: {line}", rows_file.display()))?;
                rows.push(Row {
                    name: v["name"].as_str().unwrap_or_default().to_string(),
                    ours: v["ours_images_per_s"].as_f64().unwrap_or(f64::NAN),
                    pytorch: v["pytorch_images_per_s"].as_f64().unwrap_or(f64::NAN),
                    extra: v.get("extra").cloned().unwrap_or(Value::Null),
                });
            }
        }
    }

    eprintln!("bench: building basisnet (release)");
    let mut build = Command::new(&cargo);
    build
        .current_dir(&root)
        .args(["build", "--release", "-p", "basis-cli"]);
    torch.apply_env(&mut build);
    util::run("cargo build --release -p basis-cli", &mut build)?;
    let binary = root.join("target/release/basisnet");
    let (table, inference) = inference(&scripts, &binary, &torch, args, &out)?;
    sections.push(("End-to-end inference (224 px)".into(), table));
    rows.extend(inference);
    write_report(&out, &rows, &sections)
}

/// `report.md` (summary, then each section) and `report.json` (the rows) into `out`.
fn write_report(out: &Path, rows: &[Row], sections: &[(String, String)]) -> Result<()> {
    let device = rows
        .iter()
        .find_map(|r| r.extra.get("device").and_then(|d| d.as_str()))
        .unwrap_or("cpu")
        .to_string();
    let mut md = format!(
        "# Benchmark report\n\n`cargo xtask bench`, {}. Device: {device}. Ratios are ours / PyTorch (higher is better for ours); medians of each side's timed runs, both sides in the same run.\n\n",
        util::date()
    );
    md.push_str("## Summary\n\n| comparison | ours images/s | PyTorch images/s | ratio |\n|---|---|---|---|\n");
    for r in rows {
        md.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.2}x |\n",
            r.name,
            r.ours,
            r.pytorch,
            r.ours / r.pytorch
        ));
    }
    let below: Vec<&Row> = rows.iter().filter(|r| r.ours < r.pytorch).collect();
    if below.is_empty() {
        md.push_str("\nOurs is at least 1.0x PyTorch on every row.\n");
    } else {
        md.push_str(&format!(
            "\nBelow 1.0x on {} of {} rows: {}.\n",
            below.len(),
            rows.len(),
            below
                .iter()
                .map(|r| format!("{} ({:.2}x)", r.name, r.ours / r.pytorch))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for (title, body) in sections {
        md.push_str(&format!("\n## {title}\n\n{}\n", body.trim()));
    }
    let json_rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut v = json!({
                "name": r.name,
                "ours_images_per_s": r.ours,
                "pytorch_images_per_s": r.pytorch,
                "ratio": r.ours / r.pytorch,
            });
            if let (Some(obj), Some(extra)) = (v.as_object_mut(), r.extra.as_object()) {
                for (k, x) in extra {
                    obj.insert(k.clone(), x.clone());
                }
            }
            v
        })
        .collect();
    let md_path = out.join("report.md");
    let json_path = out.join("report.json");
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    std::fs::write(&json_path, serde_json::to_string_pretty(&json_rows)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    eprintln!(
        "bench: wrote {} and {}",
        md_path.display(),
        json_path.display()
    );
    Ok(())
}

/// The markdown tables and result lines of a bench's output (criterion's own progress
/// lines dropped).
fn tables_only(text: &str) -> String {
    let mut keep = Vec::new();
    let mut in_table = false;
    for line in text.lines() {
        let t = line.trim_start();
        let table = t.starts_with('|');
        let note = !table
            && (t.starts_with("ratio")
                || t.starts_with("per worker")
                || t.starts_with("first-step")
                || t.starts_with("Pipeline:")
                || t.starts_with("Training step")
                || t.starts_with("parity")
                || t.starts_with("Medians")
                || t.starts_with("Layer")
                || t.starts_with("Model")
                || t.starts_with("###"));
        if table || note {
            if table && !in_table {
                keep.push(String::new());
            }
            keep.push(line.to_string());
        } else if in_table {
            keep.push(String::new());
        }
        in_table = table;
    }
    keep.join("\n")
}

/// Run `cmd` and parse its standard output as one JSON value; `what` names it in errors.
fn json_of(cmd: &mut Command, what: &str) -> Result<Value> {
    let out = cmd
        .output()
        .with_context(|| format!("could not start {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("{what} printed no JSON"))
}

/// The end-to-end inference rows: a markdown table and the comparison rows.
fn inference(
    scripts: &Path,
    binary: &Path,
    torch: &setup::Torch,
    args: &BenchArgs,
    out: &Path,
) -> Result<(String, Vec<Row>)> {
    let iters = args.iters;
    let threads = std::env::var("BASISNET_BENCH_THREADS").unwrap_or_else(|_| "2".into());
    let cuda = Command::new(binary)
        .args(["benchmark", "--model", "mobilenet-v3-large", "--batch", "1"])
        .args(["--iters", "1", "--warmup", "0", "--json"])
        .env("OMP_NUM_THREADS", &threads)
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
        .and_then(|v| v["device"].as_str().map(|d| d.starts_with("cuda")))
        .unwrap_or(false);
    let device = if cuda { "cuda" } else { "cpu" };
    let models = [
        (
            "mobilenet-v3-large",
            "MobilenetV3Large",
            "MobileNetV3-Large (static)",
            "torchvision",
        ),
        (
            "basisnet-mv3",
            "BasisnetMv3",
            "basisnet-mv3, no exit",
            "CondConv-style",
        ),
        (
            "basisnet-mv3-exit",
            "BasisnetMv3Exit",
            "basisnet-mv3, 50% exit",
            "CondConv-style",
        ),
    ];
    let mut table = format!(
        "Device: {device}{}. Each side of each row runs in its own processes on the same weights and batch, {} time(s), alternating with the other side; the fastest process of each side is reported (its peak memory is that process's resident high-water mark, libtorch included).\n\n| model | batch | precision | fp32 logit gap (relative) | ours ms/batch | PyTorch ms/batch | ours images/s | PyTorch images/s | ratio | ours peak MiB | PyTorch peak MiB | PyTorch layout | images through the specialist (ours / PyTorch) | params | MAdds/image |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        if cuda { String::new() } else { format!(", {threads} threads") },
        args.rounds
    );
    let mut rows = Vec::new();
    for (arg, py_name, label, reference) in models {
        for &batch in &args.batches {
            for precision in ["f32", "bf16"] {
                if arg == "basisnet-mv3-exit" && batch == 1 {
                    continue; // one image either exits or not: the other two rows.
                }
                let state = out.join("state.safetensors");
                let _ = std::fs::remove_file(&state);
                eprintln!("bench: {label}, batch {batch}, {precision}");
                let run_ours = |save: bool| -> Result<Value> {
                    let mut cmd = Command::new(binary);
                    cmd.args(["benchmark", "--model", arg, "--json", "--device", device])
                        .args(["--batch", &batch.to_string(), "--precision", precision])
                        .args(["--iters", &iters.to_string()])
                        .env("OMP_NUM_THREADS", &threads);
                    if save {
                        cmd.arg("--save-state").arg(&state);
                    }
                    json_of(
                        &mut cmd,
                        &format!("basisnet benchmark --model {arg} --batch {batch} --precision {precision}"),
                    )
                };
                let run_theirs = || -> Result<Value> {
                    let mut py = Command::new("python3");
                    py.arg(scripts.join("inference_bench.py"))
                        .arg(&state)
                        .args([py_name, &batch.to_string(), precision, device])
                        .args([&iters.to_string(), "2", &threads])
                        .env("OMP_NUM_THREADS", &threads);
                    torch.apply_env(&mut py);
                    json_of(
                        &mut py,
                        &format!("scripts/inference_bench.py {py_name} {batch} {precision}"),
                    )
                };
                // Rounds alternating sides (ours, PyTorch, ours, PyTorch, ...); each side
                // keeps its fastest process, so a slow spell of a shared machine does not
                // land on one side only.
                let faster = |a: Value, b: Value| {
                    let rate = |v: &Value| v["images_per_s"].as_f64().unwrap_or(0.0);
                    if rate(&b) > rate(&a) {
                        b
                    } else {
                        a
                    }
                };
                let (mut ours, mut theirs) = (run_ours(true)?, run_theirs()?);
                for _ in 1..args.rounds {
                    ours = faster(ours, run_ours(false)?);
                    theirs = faster(theirs, run_theirs()?);
                }
                let _ = std::fs::remove_file(&state);
                let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
                let diff = f(&theirs, "logit_gap_fp32");
                if diff.is_nan() || diff >= 1e-4 {
                    bail!(
                        "{label}, batch {batch}: PyTorch's fp32 logits differ from ours by {diff:e} of their largest magnitude (expected < 1e-4): not the same model, no timing reported"
                    );
                }
                let (o, t) = (f(&ours, "images_per_s"), f(&theirs, "images_per_s"));
                table.push_str(&format!(
                    "| {label} | {batch} | {precision} | {diff:.1e} | {:.2} | {:.2} | {o:.1} | {t:.1} | {:.2}x | {:.0} | {:.0} | {} | {} / {} | {} | {:.1}M |\n",
                    f(&ours, "ms_per_batch"),
                    f(&theirs, "ms_per_batch"),
                    o / t,
                    f(&ours, "peak_rss_mib"),
                    f(&theirs, "peak_rss_mib"),
                    theirs["layout"].as_str().unwrap_or("?"),
                    ours["specialist_images"],
                    theirs["specialist_images"],
                    ours["params"],
                    f(&ours, "madds") / 1e6,
                ));
                rows.push(Row {
                    name: format!(
                        "inference: {label}, batch {batch}, {precision} (vs {reference})"
                    ),
                    ours: o,
                    pytorch: t,
                    extra: json!({
                        "kind": "inference",
                        "batch": batch,
                        "precision": precision,
                        "device": ours["device"],
                        "ours_ms_per_batch": ours["ms_per_batch"],
                        "pytorch_ms_per_batch": theirs["ms_per_batch"],
                        "ours_peak_rss_mib": ours["peak_rss_mib"],
                        "pytorch_peak_rss_mib": theirs["peak_rss_mib"],
                        "pytorch_layout": theirs["layout"],
                        "logit_gap_fp32": diff,
                        "ours_specialist_images": ours["specialist_images"],
                        "pytorch_specialist_images": theirs["specialist_images"],
                        "params": ours["params"],
                        "madds": ours["madds"],
                    }),
                });
            }
        }
    }
    Ok((table, rows))
}
