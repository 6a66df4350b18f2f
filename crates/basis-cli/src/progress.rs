//! How `basisnet train` shows a run's progress: a bar redrawn in place on a terminal,
//! otherwise a line every `train.log_every` steps; one line per finished epoch.

use basis_train::progress::{EpochResult, Observer, StepProgress};
use std::io::{IsTerminal, Write};

/// Renders a run's progress on stderr.
pub struct Terminal {
    bar: bool,
    log_every: usize,
}

impl Terminal {
    /// A bar when stderr is a terminal, else lines every `log_every` steps.
    pub fn new(log_every: usize) -> Self {
        Self {
            bar: std::io::stderr().is_terminal(),
            log_every: log_every.max(1),
        }
    }
}

impl Observer for Terminal {
    fn step(&mut self, p: &StepProgress) {
        if self.bar {
            let width = 30;
            let filled = width * p.step / p.steps.max(1);
            eprint!(
                "\r[{}{}] {p}   ",
                "#".repeat(filled),
                "-".repeat(width - filled.min(width))
            );
            let _ = std::io::stderr().flush();
        } else if p.step % self.log_every == 0 || p.step == p.steps {
            eprintln!("{p}");
        }
    }

    fn epoch(&mut self, result: &EpochResult) {
        if self.bar {
            eprintln!();
        }
        eprintln!("{result}");
    }

    fn data(&mut self, epoch: usize, summary: &str) {
        if self.bar {
            eprintln!();
        }
        eprintln!("epoch {epoch}: {summary}");
    }
}
