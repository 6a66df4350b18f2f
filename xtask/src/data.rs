//! `cargo xtask data`: prepare the datasets this machine can have, without root.
//!
//! - `fashion-mnist`: the four idx files of Debian's `dataset-fashion-mnist` (from the
//!   installed package if present, else `apt-get download` and `dpkg-deb -x`).
//! - `foolbox`: the sample images of PyPI's `foolbox` 3.3.4 wheel (`pip download`, data
//!   files only), laid out as image folders: `foolbox/imagenet/val/<label>/*.jpg` (20
//!   photos) and `foolbox/cifar10/val/<label>/*.png` (20 images).
//!
//! Everything lands in the data folder (`BASISNET_DATA_DIR`, else
//! `$XDG_CACHE_HOME/basisnet/data`, else `~/.cache/basisnet/data`) and is checked against
//! `datasets/checksums.sha256`.

use crate::util;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

const CHECKSUMS: &str = include_str!("../../datasets/checksums.sha256");
const FASHION_FILES: [&str; 4] = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
];
const DEBIAN_DIR: &str = "/usr/share/datasets/fashion-mnist";
const FOOLBOX_WHEEL: &str = "foolbox-3.3.4-py3-none-any.whl";

#[derive(Clone, Copy, ValueEnum)]
pub enum Which {
    /// Fashion-MNIST from Debian's dataset-fashion-mnist.
    FashionMnist,
    /// The 20 ImageNet and 20 CIFAR-10 sample images of PyPI's foolbox 3.3.4.
    Foolbox,
    /// Both.
    All,
}

#[derive(Args)]
pub struct DataArgs {
    /// Which dataset.
    #[arg(value_enum, default_value = "all")]
    pub which: Which,
}

/// The data folder.
pub fn data_root() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("BASISNET_DATA_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let cache = match std::env::var_os("XDG_CACHE_HOME") {
        Some(c) => PathBuf::from(c),
        None => PathBuf::from(
            std::env::var_os("HOME")
                .context("set BASISNET_DATA_DIR (no HOME to put the data under)")?,
        )
        .join(".cache"),
    };
    Ok(cache.join("basisnet").join("data"))
}

pub fn run(args: &DataArgs) -> Result<()> {
    let root = data_root()?;
    if matches!(args.which, Which::FashionMnist | Which::All) {
        let dir = fashion_mnist(&root)?;
        eprintln!("data: fashion-mnist ready in {}", dir.display());
    }
    if matches!(args.which, Which::Foolbox | Which::All) {
        let dir = foolbox(&root)?;
        eprintln!("data: foolbox images ready in {}", dir.display());
    }
    Ok(())
}

/// The expected sha256 of `name` (a path relative to the data folder).
fn expected_sum(name: &str) -> Result<&'static str> {
    CHECKSUMS
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (sum, file) = l.split_once("  ")?;
            (file.trim() == name).then_some(sum)
        })
        .with_context(|| format!("datasets/checksums.sha256 has no line for {name}"))
}

fn sha256(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Check `path` against the line for `name`; a mismatch removes the file.
fn verify(path: &Path, name: &str) -> Result<()> {
    let (expected, found) = (expected_sum(name)?, sha256(path)?);
    if expected != found {
        let _ = std::fs::remove_file(path);
        bail!(
            "{} has sha256 {found}, expected {expected} (datasets/checksums.sha256); the file was removed",
            path.display()
        );
    }
    Ok(())
}

/// Fashion-MNIST into `<root>/fashion-mnist`.
pub fn fashion_mnist(root: &Path) -> Result<PathBuf> {
    let dest = root.join("fashion-mnist");
    let ready = FASHION_FILES.iter().all(|f| {
        let p = dest.join(f);
        p.exists() && expected_sum(&format!("fashion-mnist/{f}")).ok() == sha256(&p).ok().as_deref()
    });
    if ready {
        return Ok(dest);
    }
    std::fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
    let installed = Path::new(DEBIAN_DIR);
    let source = if FASHION_FILES.iter().all(|f| installed.join(f).exists()) {
        installed.to_path_buf()
    } else {
        let tmp = root.join(".download-fashion-mnist");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        let download = || {
            Command::new("apt-get")
                .args(["download", "dataset-fashion-mnist"])
                .current_dir(&tmp)
                .output()
                .context("apt-get was not found; install Debian's dataset-fashion-mnist, or put the four idx files in a folder and pass it to the trainer")
        };
        let mut out = download()?;
        if !out.status.success() && is_root() {
            // A fresh machine may have no package lists yet: as root, fetch them once.
            eprintln!("data: apt-get download failed; running apt-get update once");
            let _ = Command::new("apt-get").args(["update", "-qq"]).status();
            out = download()?;
        }
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            bail!(
                "apt-get download dataset-fashion-mnist failed ({}); run `apt-get update` first (as root), or `apt-get install dataset-fashion-mnist`",
                err.lines().last().unwrap_or("no message").trim()
            );
        }
        let deb = std::fs::read_dir(&tmp)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download left no .deb file")?;
        util::run(
            "dpkg-deb -x",
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(tmp.join("x")),
        )?;
        tmp.join("x").join(DEBIAN_DIR.trim_start_matches('/'))
    };
    for f in FASHION_FILES {
        let to = dest.join(f);
        std::fs::copy(source.join(f), &to)
            .with_context(|| format!("copying {} from {}", f, source.display()))?;
        verify(&to, &format!("fashion-mnist/{f}"))?;
    }
    let _ = std::fs::remove_dir_all(root.join(".download-fashion-mnist"));
    Ok(dest)
}

/// The foolbox sample images into `<root>/foolbox/{imagenet,cifar10}/val/<label>/`.
pub fn foolbox(root: &Path) -> Result<PathBuf> {
    let dest = root.join("foolbox");
    let marker = dest.join(".complete");
    if marker.exists() {
        return Ok(dest);
    }
    let tmp = root.join(".download-foolbox");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let out = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-cache-dir",
            "--disable-pip-version-check",
        ])
        .args(["foolbox==3.3.4", "-d"])
        .arg(&tmp)
        .output()
        .context(
            "python3 was not found; install python3 and pip (Debian: apt-get install python3-pip)",
        )?;
    if !out.status.success() {
        bail!(
            "pip could not download foolbox==3.3.4 ({}); it needs access to the Python package index",
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("no message").trim()
        );
    }
    let wheel = tmp.join(FOOLBOX_WHEEL);
    verify(&wheel, &format!("foolbox/{FOOLBOX_WHEEL}"))?;
    // Only the data files, through Python's zipfile (no code of the wheel is used).
    let script = r#"
import sys, zipfile, pathlib
wheel, dest = sys.argv[1], pathlib.Path(sys.argv[2])
n = 0
for name in zipfile.ZipFile(wheel).namelist():
    file = name.rsplit("/", 1)[-1]
    if not name.startswith("foolbox/data/"):
        continue
    stem = file.rsplit(".", 1)[0]
    parts = stem.split("_")
    if parts[0] not in ("imagenet", "cifar10") or len(parts) != 3:
        continue
    folder = dest / parts[0] / "val" / f"{int(parts[2]):04d}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / file).write_bytes(zipfile.ZipFile(wheel).read(name))
    n += 1
print(n)
"#;
    let _ = std::fs::remove_dir_all(&dest);
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&wheel)
        .arg(&dest)
        .output()
        .context("running python3 to unpack the foolbox images")?;
    let count = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || count != "40" {
        bail!(
            "unpacking the foolbox images gave {count:?} files, expected 40: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    std::fs::write(&marker, "foolbox 3.3.4: 20 imagenet + 20 cifar10 images\n")?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(dest)
}

/// Whether this process runs as root (`id -u` prints 0).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
