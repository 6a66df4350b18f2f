//! Shared by the workspace's criterion benches: read this run's medians back.

use std::path::PathBuf;

/// criterion's folder: `<target>/criterion`.
fn criterion_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("criterion")
}

/// criterion's median estimate, in ms, of benchmark `group/row/col` (ids made of letters,
/// digits, spaces and '-', which criterion keeps as they are in its folder names).
pub fn median_ms(group: &str, row: &str, col: &str) -> Option<f64> {
    let path = criterion_dir()
        .join(group)
        .join(row)
        .join(col)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(json["median"]["point_estimate"].as_f64()? / 1e6)
}
