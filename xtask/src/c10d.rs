//! The headers `basis-dist` compiles its c10d shim with that the PyTorch wheel lacks:
//! Gloo's (Debian's `libgloo-dev`, unpacked without installing it) and, for the NCCL
//! backend on CUDA builds, CCCL's (`nvidia-cuda-cccl` from PyPI, the version of the
//! wheel's CUDA runtime). Kept in the cache beside libtorch and linked as
//! `<workspace>/.c10d`, which `.cargo/config.toml` names as `BASISNET_C10D_HEADERS`.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};

/// CCCL matching the CUDA 13.0 runtime PyTorch 2.13.0's wheel depends on.
const CCCL: &str = "nvidia-cuda-cccl==13.0.85";
/// Written last; names what the folder holds.
const MARKER: &str = ".basisnet-c10d-headers";

/// Make sure `dir` holds `gloo/include` (and `cccl/include` when `cuda`), then link it.
pub fn ensure(dir: &Path, link: &Path, cuda: bool) -> Result<()> {
    let want = format!("libgloo-dev {}", if cuda { CCCL } else { "" });
    let have = std::fs::read_to_string(dir.join(MARKER)).unwrap_or_default();
    if have.trim() != want.trim() || !dir.join("gloo/include/gloo/algorithm.h").exists() {
        install(dir, cuda)?;
        std::fs::write(dir.join(MARKER), want.trim().to_string() + "\n")
            .with_context(|| format!("could not write {}", dir.join(MARKER).display()))?;
    }
    crate::util::link(link, dir)
}

fn install(dir: &Path, cuda: bool) -> Result<()> {
    let partial = dir.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial)
            .with_context(|| format!("could not clear {}", partial.display()))?;
    }
    std::fs::create_dir_all(&partial)
        .with_context(|| format!("could not create {}", partial.display()))?;
    eprintln!(
        "setup: Gloo's headers from Debian's libgloo-dev into {}",
        dir.display()
    );
    let download = || {
        Command::new("apt-get")
            .args(["download", "libgloo-dev"])
            .current_dir(&partial)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
    };
    let mut out = download();
    if matches!(&out, Ok(o) if !o.status.success()) {
        // No package lists yet (a fresh container): read them once, then try again.
        let _ = Command::new("apt-get")
            .args(["update", "-qq"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        out = download();
    }
    let out = match out {
        Ok(out) => out,
        Err(e) => bail!(
            "could not run apt-get to fetch Gloo's headers ({e}); install Debian's libgloo-dev \
             or set BASISNET_C10D_HEADERS to a folder holding gloo/include"
        ),
    };
    if !out.status.success() {
        bail!(
            "apt-get download libgloo-dev failed ({}); Gloo's headers are needed to build \
             basis-dist: install libgloo-dev or set BASISNET_C10D_HEADERS",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let deb = std::fs::read_dir(&partial)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb file")?;
    let root = partial.join("deb");
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .status()
        .context("could not run dpkg-deb to unpack libgloo-dev")?;
    if !status.success() {
        bail!("dpkg-deb could not unpack {}", deb.display());
    }
    std::fs::create_dir_all(partial.join("gloo"))?;
    std::fs::rename(root.join("usr/include"), partial.join("gloo/include"))
        .context("libgloo-dev holds no usr/include")?;
    std::fs::remove_dir_all(&root)?;
    std::fs::remove_file(&deb)?;
    if cuda {
        eprintln!("setup: CCCL's headers ({CCCL}) for the NCCL backend");
        let site = partial.join("cccl-site");
        let out = crate::util::pip_install_into(&site)
            .arg("--no-deps")
            .arg(CCCL)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .context("could not start python3 -m pip")?;
        let include = std::fs::read_dir(site.join("nvidia"))
            .ok()
            .and_then(|mut d| d.find_map(|e| e.ok().map(|e| e.path().join("include"))))
            .filter(|p| p.join("nv/target").exists());
        match (out.status.success(), include) {
            (true, Some(include)) => {
                std::fs::create_dir_all(partial.join("cccl"))?;
                std::fs::rename(include, partial.join("cccl/include"))?;
            }
            _ => eprintln!(
                "setup: warning: pip could not install {CCCL}; basis-dist builds without its \
                 NCCL backend (Gloo still works on CPU and CUDA)"
            ),
        }
        let _ = std::fs::remove_dir_all(&site);
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("could not replace the old {}", dir.display()))?;
    }
    std::fs::rename(&partial, dir)
        .with_context(|| format!("could not move the headers into {}", dir.display()))
}
