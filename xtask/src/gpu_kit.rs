//! `cargo xtask gpu-kit`: what a GPU machine without Rust runs, in one folder.
//!
//! The lent GPU machine has PyTorch 2.11.0 (CUDA 13) and no toolchain, so its binaries are
//! built here against libtorch 2.11.0 (`tch` 0.24 pins it; the workspace uses 0.26 and
//! 2.13.0). Rather than move the workspace back two releases, the kit is a side build: a
//! copy of the sources in `target/gpu-kit/src` whose manifest asks for `tch` 0.24, built
//! into `target/gpu-kit/target` against PyTorch 2.11.0 from PyPI (installed once into the
//! user cache, about a minute). The kit, `target/gpu-kit/kit`:
//!
//! - `bin/basisnet`, the CUDA checks (`cuda-models`, `cuda-train`), the training-step and
//!   input-pipeline benchmarks (`train-step`, `pipeline`) and `xtask` (for the inference
//!   rows; it links no libtorch);
//! - `scripts/`: the PyTorch peers; `data/imagenet`: foolbox's 20 ImageNet JPEGs;
//! - `run.sh`: on the GPU machine, every CUDA check, then the benchmark rows, into
//!   `report.md` in the folder it is given. It finds libtorch through that machine's
//!   `python3`.
//!
//! `--libtorch current` assembles the same kit from this workspace's debug build
//! (libtorch 2.13.0) in a minute or two: CI runs its `run.sh` on the CPU, where it reports
//! CUDA as absent and exits cleanly.

use crate::{data, setup, util};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The GPU machine's PyTorch, and the `tch` release that pins it.
const GPU_TORCH: &str = "2.11.0";
const GPU_TCH: &str = "0.24.0";
/// What travels to the GPU machine per call, at most.
const MAX_KIT_BYTES: u64 = 64 << 20;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Libtorch {
    /// PyTorch 2.11.0, the GPU machine's (a release side build with `tch` 0.24).
    #[value(name = "2.11")]
    Gpu,
    /// This workspace's libtorch and debug build (to check the kit on this machine).
    Current,
}

#[derive(Args)]
pub struct GpuKitArgs {
    /// Which libtorch the kit's binaries link.
    #[arg(long, value_enum, default_value = "2.11")]
    pub libtorch: Libtorch,
    /// After assembling, run the kit's script here, writing its report into this folder.
    #[arg(long)]
    pub run: Option<PathBuf>,
}

/// The binaries of the kit built against its libtorch.
struct Built {
    basisnet: PathBuf,
    cuda_models: PathBuf,
    cuda_train: PathBuf,
    train_step: PathBuf,
    pipeline: PathBuf,
}

pub fn run(args: &GpuKitArgs) -> Result<PathBuf> {
    let root = util::workspace_root();
    let torch = setup::run(&setup::SetupArgs::default())?;
    let base = root.join("target").join("gpu-kit");
    let built = match args.libtorch {
        Libtorch::Current => build(&root, &root.join("target"), false, |cmd| {
            torch.apply_env(cmd)
        })?,
        Libtorch::Gpu => side_build(&root, &base)?,
    };
    let xtask = match args.libtorch {
        Libtorch::Current => std::env::current_exe()?,
        Libtorch::Gpu => xtask_binary(&root)?,
    };
    let data_root = data::data_root()?;
    data::foolbox(&data_root)?;
    let kit = base.join("kit");
    if kit.exists() {
        std::fs::remove_dir_all(&kit).with_context(|| format!("emptying {}", kit.display()))?;
    }
    std::fs::create_dir_all(kit.join("bin"))?;
    std::fs::create_dir_all(kit.join("scripts"))?;
    for (name, from) in [
        ("basisnet", &built.basisnet),
        ("cuda-models", &built.cuda_models),
        ("cuda-train", &built.cuda_train),
        ("train-step", &built.train_step),
        ("pipeline", &built.pipeline),
        ("xtask", &xtask),
    ] {
        let to = kit.join("bin").join(name);
        std::fs::copy(from, &to)
            .with_context(|| format!("copying {} into the kit", from.display()))?;
        // Debug information is most of a test binary's size; the kit must travel in 64 MiB.
        let _ = Command::new("strip").arg("--strip-debug").arg(&to).status();
    }
    for entry in std::fs::read_dir(root.join("scripts"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "py") {
            std::fs::copy(&path, kit.join("scripts").join(path.file_name().unwrap()))?;
        }
    }
    // The pipeline benchmark's JPEGs (foolbox's 20 ImageNet images, 1.7 MB).
    copy_tree(
        &data_root.join("foolbox/imagenet/val"),
        &kit.join("data/imagenet"),
    )?;
    let script = kit.join("run.sh");
    std::fs::write(&script, include_str!("gpu_kit.sh"))?;
    let mut perms = std::fs::metadata(&script)?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&script, perms)?;
    std::fs::write(
        kit.join("BUILD"),
        format!(
            "libtorch {}\ncommit {}\n",
            match args.libtorch {
                Libtorch::Gpu => GPU_TORCH,
                Libtorch::Current => setup::TORCH_VERSION,
            },
            util::commit(&root)
        ),
    )?;
    let bytes = folder_bytes(&kit)?;
    eprintln!(
        "gpu-kit: {} ({:.1} MiB)",
        kit.display(),
        bytes as f64 / (1 << 20) as f64
    );
    // Only the 2.11 kit travels; the debug one is checked here.
    if bytes > MAX_KIT_BYTES && args.libtorch == Libtorch::Gpu {
        bail!(
            "the kit is {:.1} MiB, over the 64 MiB a GPU machine call carries",
            bytes as f64 / (1 << 20) as f64
        );
    }
    if let Some(out) = &args.run {
        std::fs::create_dir_all(out)?;
        let mut cmd = Command::new(&script);
        cmd.arg(out);
        torch.apply_env(&mut cmd);
        util::run("the kit's run.sh", &mut cmd)?;
    }
    Ok(kit)
}

/// Install PyTorch 2.11.0, copy the sources with `tch` 0.24 in the manifest, build there.
fn side_build(root: &Path, base: &Path) -> Result<Built> {
    let torch_dir = setup::cache_root()?.join(format!("torch-{GPU_TORCH}"));
    let requirements = [format!("torch=={GPU_TORCH}")];
    let requirements: Vec<&str> = requirements.iter().map(String::as_str).collect();
    if !setup::is_complete(&torch_dir, &requirements) {
        setup::install(&torch_dir, &requirements)?;
    }
    let src = base.join("src");
    for folder in ["crates", "xtask", "scripts"] {
        let to = src.join(folder);
        if to.exists() {
            std::fs::remove_dir_all(&to)?;
        }
        copy_tree(&root.join(folder), &to)?;
    }
    std::fs::copy(root.join("Cargo.lock"), src.join("Cargo.lock"))?;
    let manifest = std::fs::read_to_string(root.join("Cargo.toml"))?;
    let manifest = retarget_manifest(&manifest)?;
    std::fs::write(src.join("Cargo.toml"), manifest)?;
    let headers = std::fs::canonicalize(root.join(".c10d"))
        .context("no .c10d headers link; run `cargo xtask setup`")?;
    let libtorch = torch_dir.join("torch");
    eprintln!(
        "gpu-kit: building against libtorch {GPU_TORCH} ({}) in {}",
        libtorch.display(),
        src.display()
    );
    build(&src, &base.join("target"), true, |cmd| {
        cmd.env("LIBTORCH", &libtorch)
            .env("BASISNET_C10D_HEADERS", &headers)
            .env_remove("LIBTORCH_USE_PYTORCH");
    })
}

/// The workspace manifest with `tch` and `torch-sys` pinned to the GPU machine's release.
fn retarget_manifest(manifest: &str) -> Result<String> {
    let mut found = 0;
    let out: Vec<String> = manifest
        .lines()
        .map(|line| {
            let key = line.split('=').next().unwrap_or("").trim();
            if key == "tch" || key == "torch-sys" {
                found += 1;
                format!("{key} = \"={GPU_TCH}\"")
            } else {
                line.to_string()
            }
        })
        .collect();
    if found != 2 {
        bail!("Cargo.toml names tch and torch-sys {found} times in all, expected once each");
    }
    Ok(out.join("\n") + "\n")
}

/// The kit's binaries: (package, kind of target, target name), in [`Built`]'s order.
const TARGETS: [(&str, &str, &str); 5] = [
    ("basis-cli", "bin", "basisnet"),
    ("basis-models", "test", "cuda"),
    ("basis-train", "test", "cuda"),
    ("basis-train", "bench", "train_step"),
    ("basis-train", "bench", "pipeline"),
];

/// Build the kit's binaries in the workspace at `dir` into `target`. The debug kit takes
/// the artifacts `cargo test --workspace` builds (one command over the whole workspace,
/// so the features are the same and nothing is compiled twice); the release side build
/// builds each binary on its own.
fn build(dir: &Path, target: &Path, release: bool, env: impl Fn(&mut Command)) -> Result<Built> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let words = |line: &str| line.split(' ').map(String::from).collect::<Vec<_>>();
    let commands: Vec<Vec<String>> = if release {
        TARGETS
            .iter()
            .map(|(package, kind, name)| {
                let verb = if *kind == "test" {
                    "test --no-run"
                } else {
                    "build"
                };
                words(&format!("{verb} --release -p {package} --{kind} {name}"))
            })
            .collect()
    } else {
        vec![words("test --workspace --no-run --tests --bins --benches")]
    };
    let mut messages = Vec::new();
    for args in commands {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(dir)
            .args(&args)
            .args(["--message-format", "json-render-diagnostics"])
            .env("CARGO_TARGET_DIR", target)
            .stderr(Stdio::inherit());
        env(&mut cmd);
        let out = cmd.output().context("could not start cargo")?;
        if !out.status.success() {
            bail!("cargo {} failed ({})", args.join(" "), out.status);
        }
        messages.extend(out.stdout);
        messages.push(b'\n');
    }
    let mut found = Vec::new();
    for (package, _, name) in TARGETS {
        found.push(
            executable(&messages, package, name)
                .with_context(|| format!("cargo named no executable for {package}'s {name}"))?,
        );
    }
    let mut found = found.into_iter();
    let mut next = || found.next().expect("one executable a target");
    Ok(Built {
        basisnet: next(),
        cuda_models: next(),
        cuda_train: next(),
        train_step: next(),
        pipeline: next(),
    })
}

/// The executable cargo's JSON messages report for the target `name` of `package`.
fn executable(messages: &[u8], package: &str, name: &str) -> Option<PathBuf> {
    let manifest = format!("/{package}/Cargo.toml");
    String::from_utf8_lossy(messages)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == name)
        .filter(|v| {
            v["manifest_path"]
                .as_str()
                .is_some_and(|m| m.ends_with(&manifest))
        })
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
}

/// The release `xtask` (it links no libtorch, so one build serves every machine).
fn xtask_binary(root: &Path) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--release", "-p", "xtask"])
        .args(["--message-format", "json-render-diagnostics"])
        .stderr(Stdio::inherit());
    let out = cmd.output().context("could not start cargo")?;
    if !out.status.success() {
        bail!("cargo build --release -p xtask failed ({})", out.status);
    }
    executable(&out.stdout, "xtask", "xtask").context("cargo build -p xtask named no executable")
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&path, &to.join(entry.file_name()))?;
        } else if kind.is_file() {
            std::fs::copy(&path, to.join(entry.file_name()))
                .with_context(|| format!("copying {}", path.display()))?;
        }
    }
    Ok(())
}

fn folder_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        total += if entry.file_type()?.is_dir() {
            folder_bytes(&entry.path())?
        } else {
            entry.metadata()?.len()
        };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_is_retargeted_to_the_gpu_machines_tch() {
        let manifest =
            "[workspace.dependencies]\ntch = \"0.26\"\ntorch-sys = \"0.26\"\nserde = \"1\"\n";
        let out = retarget_manifest(manifest).unwrap();
        assert_eq!(
            out,
            "[workspace.dependencies]\ntch = \"=0.24.0\"\ntorch-sys = \"=0.24.0\"\nserde = \"1\"\n"
        );
        let err = retarget_manifest("serde = \"1\"\n").unwrap_err();
        assert!(err.to_string().contains("0 times"), "{err}");
    }
}
