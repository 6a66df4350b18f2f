//! Train a recipe from Rust with your own progress observer, then read the run back.
//!
//! `cargo run --release -p basis-train --example observe -- runs/observed` (after
//! `cargo xtask data`): one epoch of `fashion-quick` on 2,048 images.

use basis_train::progress::{EpochResult, Observer, StepProgress};
use basis_train::{Checkpoint, Recipe, Run, RunDir};

/// Prints every 20th step and each epoch.
struct Every20;

impl Observer for Every20 {
    fn step(&mut self, p: &StepProgress) {
        if p.step % 20 == 0 {
            println!("{p}");
        }
    }
    fn epoch(&mut self, result: &EpochResult) {
        println!("{result}");
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "runs/observed".into());
    let recipe = Recipe::preset("fashion-quick")?.with_overrides(&[
        "train.epochs=1".into(),
        "data.limit=2048".into(),
        "data.eval_limit=1024".into(),
    ])?;
    let mut run = Run::new(recipe, out.as_ref())?;
    run.observe(Box::new(Every20));
    let summary = run.train()?;
    // Everything a finished run holds is typed: metrics.json, checkpoints, the recipe.
    let dir = RunDir::new(&summary.dir);
    let metrics = dir.read_metrics()?;
    let best = dir.load(Checkpoint::Best, run.device())?;
    println!(
        "specialist top-1 {:.2}% (best epoch {}), {} MAdds; {} variables in the best weights",
        100.0 * metrics.evaluation.specialist_top1,
        metrics.best_epoch,
        metrics.evaluation.full_madds,
        best.vs.variables().len()
    );
    Ok(())
}
