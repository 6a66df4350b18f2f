//! `--which`: the checkpoint of a run a command uses, as a typed flag.

use basis_train::Checkpoint;
use clap::ValueEnum;

/// Which weights of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Which {
    /// The epoch with the best specialist top-1.
    Best,
    /// The end of the last epoch trained.
    Last,
}

impl From<Which> for Checkpoint {
    fn from(which: Which) -> Self {
        match which {
            Which::Best => Checkpoint::Best,
            Which::Last => Checkpoint::Last,
        }
    }
}
