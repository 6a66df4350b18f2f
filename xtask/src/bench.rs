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

mod inference;
mod machine;
mod onnx_runtime;

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
    /// Rounds of each inference row (each side once a round, alternating); the report
    /// gives each side's median and the median and range of the per-round ratios.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Leave out the rows against `torch.compile` (compiling takes minutes per row).
    #[arg(long)]
    pub skip_compile: bool,
    /// Batch sizes of the inference rows.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    pub batches: Vec<usize>,
    /// Only the ONNX Runtime comparison (the exported graphs in ONNX Runtime beside ours).
    #[arg(long)]
    pub onnx_only: bool,
    /// Time this `basisnet` instead of building one, with the PyTorch of the `python3` on
    /// `PATH` and no setup: how the GPU kit runs the inference rows (implies
    /// `--inference-only`).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// The folder of the PyTorch peer scripts (default: the workspace's `scripts`).
    #[arg(long)]
    pub scripts: Option<PathBuf>,
}

/// Environment variables of one bench run.
type Env = Vec<(&'static str, &'static str)>;

/// One comparison row of `report.json`.
struct Row {
    name: String,
    ours: f64,
    pytorch: f64,
    /// Ours / PyTorch: the median of the per-round ratios where there are rounds.
    ratio: f64,
    extra: Value,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let root = util::workspace_root();
    let scripts = args.scripts.clone().unwrap_or_else(|| root.join("scripts"));
    if let Some(binary) = &args.binary {
        let torch = setup::Torch {
            python_path: None,
            tools: None,
        };
        let out = args.out.clone().unwrap_or_else(|| PathBuf::from("bench"));
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        let (table, rows) = inference::inference(&scripts, binary, &torch, args, &out)?;
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

    if !args.inference_only && !args.onnx_only {
        // (section, package, bench, environment of the row); the training-step bench
        // measures one row per run.
        let step = |model: &'static str, precision: &'static str| {
            vec![
                ("BASISNET_BENCH_MODEL", model),
                ("BASISNET_BENCH_PRECISION", precision),
            ]
        };
        let benches: Vec<(&str, &str, &str, Env)> = vec![
            (
                "basis-core: per-sample kernel strategies",
                "basis-core",
                "strategies",
                vec![],
            ),
            (
                "basis-models: forward passes",
                "basis-models",
                "forward",
                vec![],
            ),
            (
                "basis-train: input pipeline",
                "basis-train",
                "pipeline",
                vec![],
            ),
            (
                "basis-train: training step",
                "basis-train",
                "train_step",
                step("basisnet-mv3", "fp32"),
            ),
            (
                "",
                "basis-train",
                "train_step",
                step("basisnet-mv3", "bf16"),
            ),
            (
                "",
                "basis-train",
                "train_step",
                step("mobilenet-v3-large", "fp32"),
            ),
            (
                "",
                "basis-train",
                "train_step",
                step("mobilenet-v3-large-compiled", "fp32"),
            ),
            (
                "",
                "basis-train",
                "train_step",
                step("mobilenet-v3-large-compiled", "bf16"),
            ),
        ];
        for (title, package, bench, env) in benches {
            if args.skip_compile && env.iter().any(|(_, v)| v.ends_with("compiled")) {
                continue;
            }
            eprintln!("bench: {package} --bench {bench} {env:?}");
            let mut cmd = Command::new(&cargo);
            cmd.current_dir(&root)
                .args(["bench", "-p", package, "--bench", bench])
                .env("BASISNET_DATA_DIR", &data_root)
                .env("BASISNET_BENCH_ROWS", &rows_file)
                .envs(env.iter().copied())
                .stderr(std::process::Stdio::inherit());
            torch.apply_env(&mut cmd);
            same_allocator(&mut cmd);
            let output = cmd
                .output()
                .with_context(|| format!("could not start cargo bench -p {package}"))?;
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            print!("{text}");
            if !output.status.success() {
                bail!(
                    "cargo bench -p {package} --bench {bench} ({env:?}) failed ({})",
                    output.status
                );
            }
            // Rows of one bench under different environments share its section.
            match sections.last_mut() {
                Some(last) if title.is_empty() => {
                    last.1.push_str(&format!("\n{}", tables_only(&text)))
                }
                _ => sections.push((title.to_string(), tables_only(&text))),
            }
        }
        if let Ok(text) = std::fs::read_to_string(&rows_file) {
            for line in text.lines() {
                let v: Value = serde_json::from_str(line)
                    .with_context(|| format!("{}: not a JSON row: {line}", rows_file.display()))?;
                let ours = v["ours_images_per_s"].as_f64().unwrap_or(f64::NAN);
                let pytorch = v["pytorch_images_per_s"].as_f64().unwrap_or(f64::NAN);
                rows.push(Row {
                    name: v["name"].as_str().unwrap_or_default().to_string(),
                    ours,
                    pytorch,
                    ratio: v["ratio"].as_f64().unwrap_or(ours / pytorch),
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
    if !args.onnx_only {
        let (table, inference) = inference::inference(&scripts, &binary, &torch, args, &out)?;
        sections.push(("End-to-end inference (224 px)".into(), table));
        rows.extend(inference);
    }
    let (table, onnx) = onnx_runtime::onnx_runtime(&scripts, &binary, &torch, args, &out)?;
    sections.push(("ONNX Runtime (224 px)".into(), table));
    rows.extend(onnx);
    if args.onnx_only {
        return write_report(&out, &rows, &sections);
    }
    for precision in ["f32", "bf16"] {
        sections.push((
            format!("Where a batch goes: basisnet-mv3, batch 32, {precision}"),
            profile(&binary, precision)?,
        ));
    }
    write_report(&out, &rows, &sections)
}

/// Both sides of every comparison run with glibc keeping freed blocks of up to 1 GiB in
/// the process (`basis_core::allocator`, which `basisnet` applies itself; PyTorch's CPU
/// performance guide recommends an allocator change too): without it each batch faults
/// its tensors' memory in again, a third of a batch's time on either side.
pub(crate) const ALLOCATOR_ENV: [(&str, &str); 2] = [
    ("MALLOC_MMAP_THRESHOLD_", "1073741824"),
    ("MALLOC_TRIM_THRESHOLD_", "1073741824"),
];

/// `cmd` with [`ALLOCATOR_ENV`].
pub(crate) fn same_allocator(cmd: &mut Command) -> &mut Command {
    cmd.envs(ALLOCATOR_ENV)
}

/// `basisnet benchmark --profile` of basisnet-mv3 at batch 32 on the CPU: its table.
fn profile(binary: &Path, precision: &str) -> Result<String> {
    let threads = std::env::var("BASISNET_BENCH_THREADS").unwrap_or_else(|_| "2".into());
    eprintln!("bench: profile of basisnet-mv3, batch 32, {precision}");
    let out = same_allocator(&mut Command::new(binary))
        .args(["benchmark", "--model", "basisnet-mv3", "--batch", "32"])
        .args(["--precision", precision, "--device", "cpu", "--iters", "5"])
        .arg("--profile")
        .env("OMP_NUM_THREADS", &threads)
        .output()
        .context("could not start basisnet benchmark --profile")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "basisnet benchmark --profile failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(format!(
        "`basisnet benchmark --model basisnet-mv3 --batch 32 --precision {precision} --profile`, {threads} threads: exclusive wall time of each kind of work (a span's own time, nested spans left out), mean of 5 batches after the timed ones. {}",
        text.trim()
    ))
}

/// `report.md` (summary, then each section) and `report.json` (the rows) into `out`.
fn write_report(out: &Path, rows: &[Row], sections: &[(String, String)]) -> Result<()> {
    let device = rows
        .iter()
        .find_map(|r| r.extra.get("device").and_then(|d| d.as_str()))
        .unwrap_or("cpu")
        .to_string();
    let machine = machine::Machine::here();
    let mut md = format!(
        "# Benchmark report\n\n`cargo xtask bench`, {}. Device: {device}. Machine: {}. Ratios are ours / PyTorch (higher is better for ours), both sides in the same run; inference rows: medians over alternating rounds (the ratio is the median of the per-round ratios, its range in the section below).\n\n",
        util::date(),
        machine.line()
    );
    md.push_str("## Summary\n\n| comparison | ours images/s | PyTorch images/s | ratio |\n|---|---|---|---|\n");
    for r in rows {
        md.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.2}x |\n",
            r.name, r.ours, r.pytorch, r.ratio
        ));
    }
    let below: Vec<&Row> = rows.iter().filter(|r| r.ratio < 1.0).collect();
    if below.is_empty() {
        md.push_str("\nOurs is at least 1.0x PyTorch on every row.\n");
    } else {
        md.push_str(&format!(
            "\nBelow 1.0x on {} of {} rows: {}.\n",
            below.len(),
            rows.len(),
            below
                .iter()
                .map(|r| format!("{} ({:.2}x)", r.name, r.ratio))
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
                "ratio": r.ratio,
                "machine": machine.json(),
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
