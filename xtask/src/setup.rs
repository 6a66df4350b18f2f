//! `cargo xtask setup`: libtorch 2.13.0 for `tch` 0.26, from PyTorch's PyPI wheel.
//!
//! Where libtorch comes from, first match wins:
//! 1. `LIBTORCH_USE_PYTORCH=1`: the `torch` of the `python3` on `PATH` (torch-sys reads it).
//! 2. `LIBTORCH` set by the user (not the value `.cargo/config.toml` gives): that folder.
//! 3. The cache: `BASISNET_TORCH_DIR`, else `$XDG_CACHE_HOME/basisnet/torch-2.13.0`, else
//!    `~/.cache/basisnet/torch-2.13.0`. Installed there with `pip install --target` (the
//!    CUDA build PyPI serves for Linux, with torchvision and safetensors for the parity
//!    scripts), then linked as `<workspace>/.libtorch`, which `.cargo/config.toml` names.

use crate::util;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The PyTorch release `tch` 0.26 is built against.
pub const TORCH_VERSION: &str = "2.13.0";
/// What the cache holds: libtorch (inside `torch`), and the Python side of the parity checks.
const REQUIREMENTS: &[&str] = &["torch==2.13.0", "torchvision==0.28.0", "safetensors==0.8.0"];
/// Written last into the cache folder; lists [`REQUIREMENTS`].
const MARKER: &str = ".basisnet-setup-complete";
/// Room the install needs: about 4.8 GB installed plus the downloaded wheels.
const NEEDED_BYTES: u64 = 7 << 30;

#[derive(Args, Default)]
pub struct SetupArgs {
    /// Install again even if the cache looks complete.
    #[arg(long)]
    pub force: bool,
}

/// Where libtorch was found, and how to let child processes use it.
pub struct Torch {
    /// A site folder holding `torch`, `torchvision`, ... for Python scripts, when known.
    pub python_path: Option<PathBuf>,
    /// The folder holding timm and ONNX Runtime ([`crate::python_tools`]).
    pub tools: Option<PathBuf>,
}

impl Torch {
    /// Make `cmd` see the Python packages the parity scripts import.
    pub fn apply_env(&self, cmd: &mut Command) {
        let mut paths: Vec<PathBuf> = self
            .python_path
            .iter()
            .chain(&self.tools)
            .cloned()
            .collect();
        if paths.is_empty() {
            return;
        }
        if let Some(old) = std::env::var_os("PYTHONPATH") {
            paths.extend(std::env::split_paths(&old));
        }
        if let Ok(joined) = std::env::join_paths(paths) {
            cmd.env("PYTHONPATH", joined);
        }
    }
}

pub fn run(args: &SetupArgs) -> Result<Torch> {
    let mut torch = libtorch(args)?;
    let root = util::workspace_root();
    torch.tools = Some(crate::python_tools::ensure(
        &cache_root()?,
        &root.join(".python-tools"),
    )?);
    let lib = std::fs::canonicalize(root.join(".libtorch/lib"))
        .or_else(|_| std::fs::canonicalize(user_libtorch(&root).unwrap_or_default().join("lib")))
        .unwrap_or_default();
    let cuda =
        lib.join("libtorch_cuda.so").exists() || std::env::var_os("LIBTORCH_USE_PYTORCH").is_some();
    crate::c10d::ensure(
        &cache_dir()?.join("c10d-headers"),
        &root.join(".c10d"),
        cuda,
    )?;
    Ok(torch)
}

/// libtorch: the user's, python3's, or the cache's (installed when missing).
fn libtorch(args: &SetupArgs) -> Result<Torch> {
    let root = util::workspace_root();
    if std::env::var_os("LIBTORCH_USE_PYTORCH").is_some() {
        let version = python_torch_version()?;
        if !version.starts_with(TORCH_VERSION) {
            bail!(
                "LIBTORCH_USE_PYTORCH is set, but python3's torch is {version}; tch 0.26 needs \
                 {TORCH_VERSION}: install torch=={TORCH_VERSION} or unset LIBTORCH_USE_PYTORCH"
            );
        }
        eprintln!("setup: using python3's torch {version} (LIBTORCH_USE_PYTORCH is set)");
        return Ok(Torch {
            python_path: None,
            tools: None,
        });
    }
    if let Some(user) = user_libtorch(&root) {
        if !user.join("lib").join("libtorch_cpu.so").exists() {
            bail!(
                "LIBTORCH is {}, which has no lib/libtorch_cpu.so; point it at an unpacked \
                 libtorch {TORCH_VERSION} or unset it to use the cache",
                user.display()
            );
        }
        eprintln!("setup: using LIBTORCH={}", user.display());
        return Ok(Torch {
            python_path: None,
            tools: None,
        });
    }

    let dir = cache_dir()?;
    if args.force || !is_complete(&dir, REQUIREMENTS) {
        install(&dir, REQUIREMENTS)?;
    }
    util::link(&root.join(".libtorch"), &dir.join("torch"))?;
    eprintln!(
        "setup: libtorch {TORCH_VERSION} at {} (linked as .libtorch)",
        dir.join("torch").display()
    );
    Ok(Torch {
        python_path: Some(dir),
        tools: None,
    })
}

/// `LIBTORCH` when the user set it: cargo's `[env]` sets it to `<root>/.libtorch` otherwise.
fn user_libtorch(root: &Path) -> Option<PathBuf> {
    let value = PathBuf::from(std::env::var_os("LIBTORCH")?);
    (value != root.join(".libtorch")).then_some(value)
}

fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("BASISNET_TORCH_DIR") {
        return Ok(PathBuf::from(dir));
    }
    Ok(cache_root()?.join(format!("torch-{TORCH_VERSION}")))
}

/// `$XDG_CACHE_HOME/basisnet`, else `~/.cache/basisnet`: the project's user cache.
pub fn cache_root() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(cache) => PathBuf::from(cache),
        None => PathBuf::from(
            std::env::var_os("HOME")
                .context("neither BASISNET_TORCH_DIR, XDG_CACHE_HOME nor HOME is set; set BASISNET_TORCH_DIR to a folder for the PyTorch install")?,
        )
        .join(".cache"),
    };
    Ok(base.join("basisnet"))
}

/// Whether `dir` holds a finished install of exactly `requirements`.
pub fn is_complete(dir: &Path, requirements: &[&str]) -> bool {
    let marker = std::fs::read_to_string(dir.join(MARKER)).unwrap_or_default();
    marker.trim() == requirements.join(" ")
        && dir.join("torch/lib/libtorch_cpu.so").exists()
        && dir.join("torch/include/torch").exists()
}

/// `pip install --target` `requirements` into `dir`, through a partial folder renamed at
/// the end, with the marker [`is_complete`] reads written last.
pub fn install(dir: &Path, requirements: &[&str]) -> Result<()> {
    check_python()?;
    let parent = dir
        .parent()
        .context("the PyTorch cache folder has no parent folder")?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("could not create {}", parent.display()))?;
    if let Some(free) = util::free_bytes(parent) {
        if free < NEEDED_BYTES {
            bail!(
                "only {:.1} GiB free at {}; the PyTorch install needs about {} GiB: free space \
                 or set BASISNET_TORCH_DIR to a disk with room",
                free as f64 / (1u64 << 30) as f64,
                parent.display(),
                NEEDED_BYTES >> 30
            );
        }
    }
    let partial = dir.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial)
            .with_context(|| format!("could not clear {}", partial.display()))?;
    }
    eprintln!(
        "setup: installing {} into {} (about 90 s and 4.8 GB, once)",
        requirements.join(" "),
        dir.display()
    );
    let output = util::pip_install_into(&partial)
        .args(requirements)
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .output()
        .context("could not start python3 -m pip")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let _ = std::fs::remove_dir_all(&partial);
        bail!("{}", explain_pip_failure(&stderr, parent));
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("could not replace the old {}", dir.display()))?;
    }
    std::fs::rename(&partial, dir)
        .with_context(|| format!("could not move the install into {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), requirements.join(" ") + "\n")
        .with_context(|| format!("could not write {}", dir.join(MARKER).display()))?;
    if !is_complete(dir, requirements) {
        bail!(
            "pip finished but {} has no torch/lib/libtorch_cpu.so or headers; the wheel PyPI \
             served is not the Linux build tch needs",
            dir.display()
        );
    }
    Ok(())
}

/// One sentence for the usual reasons pip fails here.
fn explain_pip_failure(stderr: &str, parent: &Path) -> String {
    let has = |needle: &str| stderr.contains(needle);
    if has("No space left on device") {
        format!(
            "the disk holding {} filled up during the PyTorch install; free about {} GiB or set \
             BASISNET_TORCH_DIR to a disk with room",
            parent.display(),
            NEEDED_BYTES >> 30
        )
    } else if has("NewConnectionError")
        || has("Failed to establish")
        || has("Temporary failure in name resolution")
        || has("Network is unreachable")
        || has("No matching distribution")
        || has("Could not find a version")
    {
        format!(
            "pip could not download torch=={TORCH_VERSION} (no network access to the Python \
             package index, or no wheel for this platform); connect and rerun `cargo xtask \
             setup`, or set LIBTORCH to an unpacked libtorch {TORCH_VERSION}"
        )
    } else {
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "pip could not install PyTorch {TORCH_VERSION}; its last lines were:\n{}",
            tail.join("\n")
        )
    }
}

fn check_python() -> Result<()> {
    let found = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !matches!(found, Ok(s) if s.success()) {
        bail!(
            "python3 was not found on PATH; install it (Debian: apt-get install python3 \
             python3-pip) or set LIBTORCH to an unpacked libtorch {TORCH_VERSION}"
        );
    }
    let pip = Command::new("python3")
        .args(["-m", "pip", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !matches!(pip, Ok(s) if s.success()) {
        bail!(
            "python3 has no pip; install it (Debian: apt-get install python3-pip, or python3 -m \
             ensurepip) and rerun `cargo xtask setup`"
        );
    }
    Ok(())
}

fn python_torch_version() -> Result<String> {
    let out = Command::new("python3")
        .args(["-c", "import torch; print(torch.__version__)"])
        .output()
        .context("LIBTORCH_USE_PYTORCH is set but python3 could not be started")?;
    if !out.status.success() {
        bail!(
            "LIBTORCH_USE_PYTORCH is set but python3 cannot import torch; install \
             torch=={TORCH_VERSION} or unset LIBTORCH_USE_PYTORCH"
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pip_network_failure_is_one_sentence_naming_the_fix() {
        let msg = explain_pip_failure(
            "WARNING: Retrying ... NewConnectionError('<pip._vendor...>: Failed to establish a new connection')\nERROR: Could not find a version that satisfies the requirement torch==2.13.0",
            Path::new("/cache"),
        );
        assert!(msg.starts_with("pip could not download torch==2.13.0"));
        assert!(msg.contains("LIBTORCH"));
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn pip_disk_full_names_the_folder() {
        let msg = explain_pip_failure(
            "ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device",
            Path::new("/cache/basisnet"),
        );
        assert!(msg.contains("/cache/basisnet"), "{msg}");
        assert!(msg.contains("BASISNET_TORCH_DIR"));
    }
}
