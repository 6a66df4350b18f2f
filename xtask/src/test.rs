//! `cargo xtask test`: what CI runs, in order, stopping at the first failure: setup,
//! data, rustfmt, clippy, the workspace's tests, the GPU kit's script on this machine,
//! the quick reproduction and the book.

use crate::{data, docs, gpu_kit, repro, setup, util};
use anyhow::Result;
use clap::Args;
use std::process::Command;

#[derive(Args)]
pub struct TestArgs {
    /// Only run the tests (skip rustfmt and clippy).
    #[arg(long)]
    pub no_lint: bool,
    /// Skip the book (`cargo xtask docs`) and the quick reproduction.
    #[arg(long)]
    pub no_docs: bool,
    /// Extra arguments passed to `cargo test` (after `--workspace`).
    #[arg(last = true)]
    pub cargo_test_args: Vec<String>,
}

pub fn run(args: &TestArgs) -> Result<()> {
    let torch = setup::run(&setup::SetupArgs::default())?;
    data::run(&data::DataArgs {
        which: data::Which::All,
    })?;
    let data_root = data::data_root()?;
    let root = util::workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let cargo_cmd = |sub: &[&str]| {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&root)
            .args(sub)
            .env("BASISNET_DATA_DIR", &data_root);
        torch.apply_env(&mut cmd);
        cmd
    };
    if !args.no_lint {
        step("cargo fmt --check");
        util::run(
            "cargo fmt --check",
            &mut cargo_cmd(&["fmt", "--all", "--", "--check"]),
        )?;
        step("cargo clippy");
        util::run(
            "cargo clippy",
            &mut cargo_cmd(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
    }
    step("cargo test");
    let mut test = cargo_cmd(&["test", "--workspace"]);
    // The CUDA checks run with the CPU standing in for the GPU: their code is checked
    // here; CUDA itself on a GPU machine (the kit below).
    test.args(&args.cargo_test_args)
        .env("BASISNET_CUDA_DRY_RUN", "1");
    util::run("cargo test", &mut test)?;
    step("cargo xtask gpu-kit --libtorch current --run target/gpu-kit-check");
    gpu_kit::run(&gpu_kit::GpuKitArgs {
        libtorch: gpu_kit::Libtorch::Current,
        run: Some(root.join("target").join("gpu-kit-check")),
    })?;
    if !args.no_docs {
        step("cargo xtask repro --quick");
        // The test command's own scratch folder, emptied first so that a second
        // `cargo xtask test` trains the reproduction again (repro keeps finished runs).
        let out = util::workspace_root().join("target").join("repro-test");
        if out.exists() {
            std::fs::remove_dir_all(&out)
                .map_err(|e| anyhow::anyhow!("emptying {}: {e}", out.display()))?;
        }
        repro::run(&repro::ReproArgs {
            quick: true,
            out: Some(out),
            ..repro::ReproArgs::default()
        })?;
        step("cargo xtask docs");
        docs::run(&docs::DocsArgs::default())?;
    }
    Ok(())
}

fn step(name: &str) {
    eprintln!("==> {name}");
}
