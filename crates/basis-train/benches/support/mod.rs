//! Helpers shared by the basis-train benches.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `python3 <scripts>/<script>`: the scripts folder is `BASISNET_SCRIPTS` (the GPU kit's)
/// or the workspace's; Python sees the PyTorch `cargo xtask setup` installed when there is
/// one, else its own.
pub fn python(script: &str) -> Command {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let scripts = std::env::var_os("BASISNET_SCRIPTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("scripts"));
    let mut cmd = Command::new("python3");
    cmd.arg(scripts.join(script));
    let libtorch = std::env::var_os("LIBTORCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join(".libtorch"));
    if let Some(site) = std::fs::canonicalize(&libtorch)
        .ok()
        .and_then(|t| t.parent().map(Path::to_path_buf))
    {
        cmd.env("PYTHONPATH", site);
    }
    cmd
}

/// The median of `v` (the upper one for an even length).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `values` as a table cell: each with `decimals` digits, comma-separated.
pub fn listed(values: &[f64], decimals: usize) -> String {
    values
        .iter()
        .map(|v| format!("{v:.decimals$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Append one comparison row to the file `cargo xtask bench` collects
/// (`BASISNET_BENCH_ROWS`), when it is set. `ratios` are the per-round ratios ours /
/// PyTorch (the row's ratio is their median), or empty for a single measurement.
pub fn record_row(name: &str, ours: f64, pytorch: f64, ratios: &[f64]) {
    let Some(path) = std::env::var_os("BASISNET_BENCH_ROWS") else {
        return;
    };
    let ratio = if ratios.is_empty() {
        ours / pytorch
    } else {
        median(ratios.to_vec())
    };
    let row = serde_json::json!({
        "name": name,
        "ours_images_per_s": ours,
        "pytorch_images_per_s": pytorch,
        "ratio": ratio,
        "extra": { "ratios": ratios },
    });
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("BASISNET_BENCH_ROWS names a writable file");
    std::io::Write::write_all(&mut file, format!("{row}\n").as_bytes()).unwrap();
}
