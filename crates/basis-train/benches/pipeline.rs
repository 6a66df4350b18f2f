//! Images per second of decode + augment + batch at 224 px, from the foolbox ImageNet
//! JPEGs repeated to fill an epoch, 2 workers, batch 32, side by side in one run with
//! torchvision's ImageFolder + DataLoader (num_workers=2) on the same files and
//! transforms (random resized crop, flip, normalize), through `scripts/pipeline_bench.py`
//! and the PyTorch `cargo xtask setup` installed. Whole-epoch wall time, workers started
//! fresh each epoch on both sides; medians of the epochs.
//!
//! `cargo bench -p basis-train --bench pipeline` (needs `cargo xtask data foolbox`).

use basis_train::data::{AugmentConfig, Dataset, ImageFolder, Loader, LoaderConfig, Repeat};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

mod support;
use support::{median, record_row};

const REPEAT: usize = 32;
const EPOCHS: usize = 5;

fn ours(folder: &Path) -> Vec<f64> {
    let base: Arc<dyn Dataset> = Arc::new(ImageFolder::open(folder, 3).expect("foolbox images"));
    let data: Arc<dyn Dataset> = Arc::new(Repeat::new(base, REPEAT));
    let config = LoaderConfig {
        batch_size: 32,
        workers: 2,
        ..LoaderConfig::default()
    };
    let loader = Loader::new(data, AugmentConfig::default(), true, config).unwrap();
    (0..EPOCHS as u64)
        .map(|epoch| {
            let start = Instant::now();
            let mut n = 0;
            for batch in loader.epoch(epoch) {
                let batch = batch.unwrap().to_tensors(tch::Device::Cpu).unwrap();
                n += batch.labels.size()[0];
            }
            n as f64 / start.elapsed().as_secs_f64()
        })
        .collect()
}

fn torchvision(folder: &Path) -> Option<Vec<f64>> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let libtorch = std::env::var_os("LIBTORCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join(".libtorch"));
    let site = std::fs::canonicalize(libtorch)
        .ok()?
        .parent()?
        .to_path_buf();
    let out = Command::new("python3")
        .arg(workspace.join("scripts/pipeline_bench.py"))
        .arg(folder)
        .arg(REPEAT.to_string())
        .arg(EPOCHS.to_string())
        .env("PYTHONPATH", site)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "torchvision side failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    json["images_per_s"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test` runs benches once in test mode: nothing to check here.
    }
    let folder = basis_train::data::default_data_root().join("foolbox/imagenet/val");
    let images = 20 * REPEAT;
    let ours = ours(&folder);
    let theirs = torchvision(&folder);
    println!("\nPipeline: {images} images an epoch at 224 px (random resized crop, flip, normalize), 2 workers, batch 32\n");
    println!("| pipeline | images/s (median of {EPOCHS} epochs) | each epoch |");
    println!("|---|---|---|");
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "| basis-train Loader | {:.0} | {} |",
        median(ours.clone()),
        fmt(&ours)
    );
    if let Some(t) = theirs {
        println!(
            "| torchvision ImageFolder + DataLoader | {:.0} | {} |",
            median(t.clone()),
            fmt(&t)
        );
        let (o, t) = (median(ours), median(t));
        println!("\nratio ours / torchvision: {:.2}x", o / t);
        record_row(
            "input pipeline, 224 px, batch 32, 2 workers (vs torchvision DataLoader)",
            o,
            t,
        );
    }
}
