//! `cargo xtask`: the project's automation, in Rust (the matklad convention).
//!
//! - `cargo xtask setup`: install libtorch 2.13.0 (PyTorch's wheel) into a user cache and
//!   point the build at it. Every other command runs it first.
//! - `cargo xtask test`: setup, data, `cargo fmt --check`, clippy with `-D warnings`, the tests.
//! - `cargo xtask data [fashion-mnist|foolbox|all]`: prepare the datasets.
//! - `cargo xtask train [--baseline]`: the main job (Fashion-MNIST BasisNet on the CPU).

mod data;
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
    /// Run every check CI runs: setup, rustfmt, clippy (-D warnings), the workspace tests.
    Test(test::TestArgs),
    /// Prepare datasets (Fashion-MNIST from Debian's package, foolbox's sample images).
    Data(data::DataArgs),
    /// The main job: train the quick Fashion-MNIST BasisNet on the CPU and summarize it.
    Train(train::TrainArgs),
}

fn main() {
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Command::Setup(args) => setup::run(&args).map(|_| ()),
        Command::Test(args) => test::run(&args),
        Command::Train(args) => train::run(&args),
        Command::Data(args) => {
            setup::run(&setup::SetupArgs::default()).and_then(|_| data::run(&args))
        }
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
