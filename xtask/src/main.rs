//! `cargo xtask`: the project's automation, in Rust (the matklad convention).
//!
//! - `cargo xtask setup`: install libtorch 2.13.0 (PyTorch's wheel) into a user cache and
//!   point the build at it. Every other command runs it first.
//! - `cargo xtask test`: setup, data, `cargo fmt --check`, clippy with `-D warnings`, the tests.
//! - `cargo xtask data [fashion-mnist|foolbox|all]`: prepare the datasets.
//! - `cargo xtask train [--baseline]`: the main job (Fashion-MNIST BasisNet on the CPU).
//! - `cargo xtask bench`: every benchmark plus the end-to-end comparison with PyTorch,
//!   into `target/bench/report.md` and `report.json`.
//! - `cargo xtask repro [--quick] [--seeds K] [--configs ...] [--publish]`: the paper's claims at small scale, over seeds.
//! - `cargo xtask docs`: the book into `target/book`.
//! - `cargo xtask gpu-kit`: the binaries and script a GPU machine without Rust runs.

mod bench;
mod c10d;
mod data;
mod docs;
mod gpu_kit;
mod python_tools;
mod repro;
mod setup;
mod test;
mod train;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "basisnet-rs automation", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install PyTorch 2.13.0 (libtorch, torchvision, safetensors) into the user cache and
    /// link it as `.libtorch`; a second run takes about a second.
    Setup(setup::SetupArgs),
    /// Run every check CI runs: setup, rustfmt, clippy (-D warnings), the workspace tests,
    /// the GPU kit's script (CUDA absent), the quick reproduction, the book.
    Test(test::TestArgs),
    /// Prepare datasets (Fashion-MNIST from Debian's package, foolbox's sample images).
    Data(data::DataArgs),
    /// The main job: train the quick Fashion-MNIST BasisNet on the CPU and summarize it.
    Train(train::TrainArgs),
    /// Run every benchmark and the end-to-end inference comparison with PyTorch eager;
    /// write target/bench/report.md and report.json.
    Bench(bench::BenchArgs),
    /// The paper's claims at small scale: BasisNet vs static vs lightweight, N ablation,
    /// early-exit curve, what the coefficients learned (--quick: minutes).
    Repro(repro::ReproArgs),
    /// The researchers' book into target/book (model zoo from the profiler, API
    /// reference, link check).
    Docs(docs::DocsArgs),
    /// Build what the lent GPU machine runs (libtorch 2.11 side build): CUDA checks,
    /// benchmarks and one script, into target/gpu-kit/kit.
    GpuKit(gpu_kit::GpuKitArgs),
}

fn main() {
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Command::Setup(args) => setup::run(&args).map(|_| ()),
        Command::Test(args) => test::run(&args),
        Command::Train(args) => train::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Repro(args) => repro::run(&args),
        Command::Docs(args) => docs::run(&args),
        Command::GpuKit(args) => gpu_kit::run(&args).map(|_| ()),
        Command::Data(args) => {
            setup::run(&setup::SetupArgs::default()).and_then(|_| data::run(&args))
        }
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
