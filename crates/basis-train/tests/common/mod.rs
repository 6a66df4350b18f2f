//! Where the tests find the data `cargo xtask data` prepared.

use std::path::PathBuf;

/// The data folder (`BASISNET_DATA_DIR`, which `cargo xtask test` sets, else the default).
pub fn data_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("BASISNET_DATA_DIR") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
    cache.join("basisnet").join("data")
}

/// A prepared dataset folder, or a panic that says how to prepare it.
pub fn prepared(name: &str) -> PathBuf {
    let dir = data_root().join(name);
    assert!(
        dir.exists(),
        "{} is missing: run `cargo xtask data` (cargo xtask test does)",
        dir.display()
    );
    dir
}

/// A fresh scratch folder for one test.
#[allow(dead_code)]
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
