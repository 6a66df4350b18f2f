//! Helpers shared by the basis-train benches.

/// The median of `v` (the upper one for an even length).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Append one comparison row to the file `cargo xtask bench` collects
/// (`BASISNET_BENCH_ROWS`), when it is set.
pub fn record_row(name: &str, ours: f64, pytorch: f64) {
    let Some(path) = std::env::var_os("BASISNET_BENCH_ROWS") else {
        return;
    };
    let row = serde_json::json!({
        "name": name,
        "ours_images_per_s": ours,
        "pytorch_images_per_s": pytorch,
    });
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("BASISNET_BENCH_ROWS names a writable file");
    std::io::Write::write_all(&mut file, format!("{row}\n").as_bytes()).unwrap();
}
