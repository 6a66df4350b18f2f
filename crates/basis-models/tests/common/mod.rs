//! Running the parity scripts with the Python packages `cargo xtask setup` installed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `python3 scripts/SCRIPT ARGS...` with the setup's site folder (the folder above
/// libtorch's `torch/`) and its Python tools (timm, ONNX Runtime: `.python-tools`) first on
/// `PYTHONPATH`; its standard output, or a panic with its standard error.
pub fn python(script: &str, args: &[&std::ffi::OsStr]) -> String {
    let libtorch = std::env::var_os("LIBTORCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".libtorch"));
    let site = std::fs::canonicalize(&libtorch)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .expect("libtorch's folder: run `cargo xtask setup`");
    let mut paths = vec![site, workspace().join(".python-tools")];
    if let Some(old) = std::env::var_os("PYTHONPATH") {
        paths.extend(std::env::split_paths(&old));
    }
    let out = Command::new("python3")
        .arg(workspace().join("scripts").join(script))
        .args(args)
        .env("PYTHONPATH", std::env::join_paths(paths).unwrap())
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{script} failed (its packages come with `cargo xtask setup`):\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}
