//! `basisnet`: the command line of basisnet-rs.

mod bench;
mod claims;
mod compare;
mod deploy;
mod export;
mod numbers;
mod profile;
mod progress;
mod spread;
mod train;
mod weights;

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
    /// Classify images: top-5 with class names, which stage decided, MAdds spent.
    Predict(deploy::PredictArgs),
    /// Bake one coefficient vector into a static, torchvision-loadable network.
    Specialize(deploy::SpecializeArgs),
    /// A run as ONNX graphs (fp32, dynamic batch) for ONNX Runtime and other runtimes.
    Export(export::ExportArgs),
    /// Pick the early-exit threshold for an accuracy drop or a MAdds budget.
    Calibrate(deploy::CalibrateArgs),
    /// Per-layer parameters and multiply-adds of a backbone or a BasisNet preset.
    Profile(profile::ProfileArgs),
    /// Inference throughput of a model at 224 px (what `cargo xtask bench` compares).
    Benchmark(bench::BenchArgs),
    /// One table and plots over several finished runs (accuracy, cost, early exit,
    /// coefficients).
    Compare(compare::CompareArgs),
}

fn main() {
    // Tensors allocated and freed in every batch reuse the process's memory instead of
    // faulting it in again (1.45-1.58x inference throughput on the 2-core machine;
    // `basis_core::allocator`).
    basis_core::allocator::keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Profile(args) => profile::run(&args),
        Command::Benchmark(args) => bench::run(&args),
        Command::Compare(args) => compare::run(&args),
        Command::Train(args) => train::train(&args),
        Command::Eval(args) => train::eval(&args),
        Command::Predict(args) => deploy::predict(&args),
        Command::Specialize(args) => deploy::specialize(&args),
        Command::Calibrate(args) => deploy::calibrate(&args),
        Command::Export(args) => export::run(&args),
    };
    if let Err(err) = result {
        eprintln!("error: {}", sentence(&err));
        std::process::exit(1);
    }
}

/// The error and its causes, each said once: a cause whose text the message already
/// holds (libraries put their source's text in their own) is not repeated.
fn sentence(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::from_raw_os_error(2);
        let err = anyhow::Error::new(basis_train::TrainError::Io {
            path: "runs/x/recipe.toml".into(),
            source: io,
        })
        .context("could not open the run");
        assert_eq!(
            sentence(&err),
            "could not open the run: runs/x/recipe.toml: No such file or directory (os error 2)"
        );
    }
}
