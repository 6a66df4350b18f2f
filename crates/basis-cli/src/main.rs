//! `basisnet`: the command line of basisnet-rs.

mod profile;
mod train;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "basisnet",
    version,
    about = "BasisNet: two-stage model synthesis (lightweight model + synthesized specialist)",
    after_help = "Examples:\n  basisnet train --recipe fashion-quick --out runs/fashion\n  basisnet eval --checkpoint runs/fashion --json\n  basisnet profile --arch mobilenet_v3_large --resolution 224\n  basisnet profile --preset basisnet-mv3 --json"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a recipe (BasisNet or its static baseline), or resume a run.
    Train(train::TrainArgs),
    /// Accuracy of a run's lightweight model and specialist, and the early-exit curve.
    Eval(train::EvalArgs),
    /// Per-layer parameters and multiply-adds of a backbone or a BasisNet preset.
    Profile(profile::ProfileArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Profile(args) => profile::run(&args),
        Command::Train(args) => train::train(&args),
        Command::Eval(args) => train::eval(&args),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
