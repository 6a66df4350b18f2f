//! The Python side of the interop checks that PyTorch's install does not carry: timm (its
//! MobileNet state dicts and logits, for the pretrained-weights parity test) and ONNX
//! Runtime (to run the exported graphs). Installed with `pip install --target --no-deps`
//! into `<cache>/basisnet/python-tools` (they import with the PyTorch and NumPy of the
//! PyTorch install beside them), linked as `<workspace>/.python-tools`, about 100 MB once.

use crate::util;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// What the folder holds, pinned.
pub const REQUIREMENTS: &[&str] = &["timm==1.0.31", "onnxruntime==1.32.0"];
/// Written last into the folder; lists [`REQUIREMENTS`].
const MARKER: &str = ".basisnet-tools-complete";

/// Install the tools into `cache/python-tools` when it does not hold exactly
/// [`REQUIREMENTS`], and link it as `link`. Returns the folder, for `PYTHONPATH`.
pub fn ensure(cache: &Path, link: &Path) -> Result<PathBuf> {
    let dir = cache.join("python-tools");
    let marker = std::fs::read_to_string(dir.join(MARKER)).unwrap_or_default();
    if marker.trim() != REQUIREMENTS.join(" ") {
        install(&dir)?;
    }
    util::link(link, &dir)?;
    Ok(dir)
}

fn install(dir: &Path) -> Result<()> {
    let partial = dir.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial)
            .with_context(|| format!("could not clear {}", partial.display()))?;
    }
    eprintln!(
        "setup: installing {} into {} (about 100 MB, once)",
        REQUIREMENTS.join(" "),
        dir.display()
    );
    let output = util::pip_install_into(&partial)
        .arg("--no-deps")
        .args(REQUIREMENTS)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("could not start python3 -m pip")?;
    if !output.status.success() {
        let _ = std::fs::remove_dir_all(&partial);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        bail!(
            "pip could not install {} (the interop tests need them; network access to the \
             Python package index once): {last}",
            REQUIREMENTS.join(" ")
        );
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("could not replace the old {}", dir.display()))?;
    }
    std::fs::rename(&partial, dir)
        .with_context(|| format!("could not move the install into {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), REQUIREMENTS.join(" ") + "\n")
        .with_context(|| format!("could not write {}", dir.join(MARKER).display()))
}
