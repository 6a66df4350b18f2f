//! Where the tests find the data `cargo xtask data` prepared.

use std::path::PathBuf;

/// A prepared dataset folder, or a panic that says how to prepare it.
#[allow(dead_code)]
pub fn prepared(name: &str) -> PathBuf {
    let dir = basis_train::data::default_data_root().join(name);
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

/// The folder holding the Python packages `cargo xtask setup` installed (the parent of
/// libtorch's `torch/`), for `PYTHONPATH`.
#[allow(dead_code)]
pub fn python_site() -> PathBuf {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let libtorch = std::env::var_os("LIBTORCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join(".libtorch"));
    std::fs::canonicalize(libtorch)
        .ok()
        .and_then(|p| p.parent().map(std::path::Path::to_path_buf))
        .expect("libtorch's folder: run `cargo xtask setup`")
}

/// Run `python3 args...` with the PyTorch and the Python tools (timm, ONNX Runtime) that
/// `cargo xtask setup` installed on `PYTHONPATH`; panics with Python's standard error if it
/// fails.
#[allow(dead_code)]
pub fn python<I, S>(args: I)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = std::process::Command::new("python3")
        .args(args)
        .env(
            "PYTHONPATH",
            std::env::join_paths([
                python_site(),
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.python-tools"),
            ])
            .unwrap(),
        )
        .output()
        .expect("python3 on PATH");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Evaluation transforms that leave a 28 px grayscale image as it is (normalized to
/// `(x - 0.5) / 0.5`).
#[allow(dead_code)]
pub fn identity_28px() -> basis_train::data::AugmentConfig {
    basis_train::data::AugmentConfig {
        resolution: 28,
        crop_pct: 1.0,
        mean: vec![0.5],
        std: vec![0.5],
        ..Default::default()
    }
}

/// The `fashion-quick` recipe with `sets` (`key=value` overrides) on the prepared
/// Fashion-MNIST.
#[allow(dead_code)]
pub fn fashion<S: AsRef<str>>(sets: &[S]) -> basis_train::Recipe {
    let sets: Vec<String> = sets.iter().map(|s| s.as_ref().to_string()).collect();
    let mut r = basis_train::Recipe::load("fashion-quick")
        .unwrap()
        .with_overrides(&sets)
        .unwrap();
    r.data.dir = Some(prepared("fashion-mnist"));
    r
}
