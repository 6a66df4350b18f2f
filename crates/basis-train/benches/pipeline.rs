//! Images per second of decode + augment + batch at 224 px, from the foolbox ImageNet
//! JPEGs repeated to fill an epoch, 2 workers (`BASISNET_BENCH_WORKERS`), batch 32, side
//! by side in one run with torchvision's ImageFolder + DataLoader (as many workers) on
//! the same files and transforms (random resized crop, flip, normalize), through
//! `scripts/pipeline_bench.py` and the PyTorch `cargo xtask setup` installed. Whole-epoch
//! wall time, workers started fresh each epoch on both sides; medians of the epochs, and
//! the rate per worker.
//!
//! `cargo bench -p basis-train --bench pipeline` (needs `cargo xtask data foolbox`;
//! `BASISNET_BENCH_IMAGES` names another folder of class folders).

use basis_train::data::{AugmentConfig, Dataset, ImageFolder, Loader, LoaderConfig, Repeat};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

mod support;
use support::{listed, median, python, record_row};

const EPOCHS: usize = 5;

/// Passes over the 20 images an epoch: 640 images at 2 workers, 16 per worker above.
fn repeat(workers: usize) -> usize {
    32.max(16 * workers)
}

fn ours(folder: &Path, workers: usize) -> Vec<f64> {
    let base: Arc<dyn Dataset> = Arc::new(ImageFolder::open(folder, 3).expect("foolbox images"));
    let data: Arc<dyn Dataset> = Arc::new(Repeat::new(base, repeat(workers)));
    let config = LoaderConfig {
        batch_size: 32,
        workers,
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

fn torchvision(folder: &Path, workers: usize) -> Option<Vec<f64>> {
    let out = python("pipeline_bench.py")
        .arg(folder)
        .arg(repeat(workers).to_string())
        .arg(EPOCHS.to_string())
        .arg(workers.to_string())
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
    let folder = std::env::var_os("BASISNET_BENCH_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| basis_train::data::default_data_root().join("foolbox/imagenet/val"));
    let workers: usize = std::env::var("BASISNET_BENCH_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(2);
    let images = 20 * repeat(workers);
    let ours = ours(&folder, workers);
    let theirs = torchvision(&folder, workers);
    println!("\nPipeline: {images} images an epoch at 224 px (random resized crop, flip, normalize), {workers} workers, batch 32\n");
    println!("| pipeline | images/s (median of {EPOCHS} epochs) | each epoch |");
    println!("|---|---|---|");
    println!(
        "| basis-train Loader | {:.0} | {} |",
        median(ours.clone()),
        listed(&ours, 0)
    );
    if let Some(t) = theirs {
        println!(
            "| torchvision ImageFolder + DataLoader | {:.0} | {} |",
            median(t.clone()),
            listed(&t, 0)
        );
        let (o, t) = (median(ours), median(t));
        println!("\nratio ours / torchvision: {:.2}x", o / t);
        println!(
            "per worker: ours {:.0} images/s, torchvision {:.0}",
            o / workers as f64,
            t / workers as f64
        );
        record_row(
            &format!(
                "input pipeline, 224 px, batch 32, {workers} workers (vs torchvision DataLoader)"
            ),
            o,
            t,
            &[],
        );
    }
}
