//! [`RunDir`]: the files of a run directory, the one place that names them and reads or
//! writes them (recipe, checkpoints, trainer state, `summary.csv`, `metrics.json`, plots),
//! and [`RunDir::load`], how every command and the distillation teacher open a run.
//!
//! ```text
//! recipe.toml              the effective recipe
//! summary.csv              one row an epoch (timm's columns)
//! metrics.json             the final evaluation and run totals ([`Metrics`])
//! curves.svg, early_exit.svg, coefficients.svg
//! <name>-gG.safetensors       weights       <name>-gG-ema.safetensors  EMA weights
//! <name>-gG-optim.safetensors  optimizer     <name>.json   trainer state: the commit
//! .lock                        the process training in the folder
//! ```
//! where `<name>` is `last`, `best` or `epoch-K` ([`Checkpoint`]) and `G` the generation
//! of the save. Every file is written atomically ([`basis_models::atomic`]); a checkpoint
//! is committed as a whole by its `.json`, written last ([`RunDir::write_checkpoint`]).

mod commit;
mod lock;

pub use commit::{Checkpoint, CheckpointFiles};
pub use lock::RunLock;

use crate::error::TrainError;
use crate::evaluation::Evaluation;
use crate::model::Model;
use crate::recipe::Recipe;
use basis_models::ExitPoint;
use basis_models::{atomic, checkpoint};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{nn, Device};

/// The trainer's own state, saved as `<checkpoint>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimizer steps taken.
    pub step: i64,
    /// Best specialist top-1 so far.
    pub best_top1: f64,
    /// The epoch of the best.
    pub best_epoch: usize,
    /// The recipe's seed (RNG streams derive from it and the epoch).
    pub seed: u64,
    /// The fp16 loss scaler's state (`train.precision = "fp16"` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scaler: Option<basis_amp::LossScaler>,
}

/// `metrics.json`: the final evaluation of a run and its totals, written by training and
/// read by `compare`, `cargo xtask train` and anyone scripting over runs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Metrics {
    /// The test split's evaluation of the final weights (its fields stand at the top
    /// level): reported, never chosen on.
    #[serde(flatten)]
    pub evaluation: Evaluation,
    /// The validation split's evaluation of the same weights, under `validation`: where
    /// the early-exit threshold is chosen ([`Metrics::early_exit_choice`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Evaluation>,
    /// Epochs trained.
    pub epochs: usize,
    /// Best specialist top-1 over the epochs.
    pub best_top1: f64,
    /// The epoch of the best.
    pub best_epoch: usize,
    /// Wall-clock seconds of training in this process (evaluation excluded).
    pub train_seconds: f64,
}

impl Metrics {
    /// The early-exit operating point chosen on the validation split (the cheapest
    /// threshold within `max_drop` of the validation specialist top-1), with the test
    /// split's point at the same threshold. `None` without a validation evaluation (a run
    /// written before the split) or a curve.
    ///
    /// ```
    /// use basis_train::{Evaluation, ExitPoint, Metrics};
    /// let point = |threshold, top1, avg_madds| ExitPoint { threshold, exit_rate: 0.0, top1, avg_madds };
    /// let curve = |a, b| vec![point(0.5, a, 10.0), point(0.9, b, 20.0)];
    /// let m = Metrics {
    ///     evaluation: Evaluation { specialist_top1: 0.9, early_exit: curve(0.80, 0.895), ..Default::default() },
    ///     validation: Some(Evaluation { specialist_top1: 0.9, early_exit: curve(0.899, 0.9), ..Default::default() }),
    ///     ..Default::default()
    /// };
    /// // Chosen on validation (0.5 is within half a point there), reported on test.
    /// let (val, test) = m.early_exit_choice(0.005).unwrap();
    /// assert_eq!((val.threshold, test.top1), (0.5, 0.80));
    /// ```
    pub fn early_exit_choice(&self, max_drop: f64) -> Option<(&ExitPoint, &ExitPoint)> {
        let chosen = self.validation.as_ref()?.operating_point(max_drop)?;
        let test = self
            .evaluation
            .early_exit
            .iter()
            .find(|p| p.threshold == chosen.threshold)?;
        Some((chosen, test))
    }
}

/// One row of `summary.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    /// Epoch (1-based).
    pub epoch: usize,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// The evaluation after the epoch.
    pub evaluation: Evaluation,
    /// Seconds the epoch's training took.
    pub seconds: f64,
}

/// A trained run, opened: its recipe, weights and EMA weights.
pub struct LoadedRun {
    /// The recipe the run was trained with.
    pub recipe: Recipe,
    /// The variables of `model`.
    pub vs: nn::VarStore,
    /// The model with the checkpoint's weights.
    pub model: Model,
    /// The EMA weights of the same checkpoint ([`RunDir::load_with_ema`]).
    pub ema: Option<(nn::VarStore, Model)>,
}

/// A run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

const SUMMARY_HEADER: &str = "epoch,lr,train_loss,light_top1,light_top5,specialist_top1,specialist_top5,ema_specialist_top1,seconds";

impl RunDir {
    /// The run directory at `path` (nothing is read or created).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { root: path.into() }
    }

    /// Its folder.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `recipe.toml`.
    pub fn recipe_path(&self) -> PathBuf {
        self.root.join("recipe.toml")
    }

    /// `metrics.json`.
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join("metrics.json")
    }

    /// `summary.csv`.
    pub fn summary_path(&self) -> PathBuf {
        self.root.join("summary.csv")
    }

    /// A plot of the run (`curves.svg`, `early_exit.svg`, `coefficients.svg`).
    pub fn plot_path(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.svg"))
    }

    /// The recipe the run was trained with.
    pub fn read_recipe(&self) -> Result<Recipe, TrainError> {
        let path = self.recipe_path();
        if !path.exists() {
            return Err(TrainError::Run(format!(
                "{} is not a run directory (no recipe.toml)",
                self.root.display()
            )));
        }
        Ok(Recipe::from_file(&path)?)
    }

    /// Write the effective recipe.
    pub fn write_recipe(&self, recipe: &Recipe) -> Result<(), TrainError> {
        write(&self.recipe_path(), recipe.to_toml().as_bytes())
    }

    /// `metrics.json` of a finished run.
    pub fn read_metrics(&self) -> Result<Metrics, TrainError> {
        let path = self.metrics_path();
        if !path.exists() {
            return Err(TrainError::Run(format!(
                "{}: expected a finished run directory with metrics.json",
                self.root.display()
            )));
        }
        read_json(&path, "run's metrics")
    }

    /// Write `metrics.json`.
    pub fn write_metrics(&self, metrics: &Metrics) -> Result<(), TrainError> {
        write_json(&self.metrics_path(), metrics)
    }

    /// Add the row of `row.epoch` to `summary.csv` (replacing the rows of that epoch and
    /// later ones, which a resumed run trains again); returns the file's new text.
    pub fn append_summary(&self, row: &SummaryRow) -> Result<String, TrainError> {
        let path = self.summary_path();
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let mut text = format!("{SUMMARY_HEADER}\n");
        for line in old.lines().skip(1) {
            let epoch = line.split(',').next().and_then(|e| e.parse::<usize>().ok());
            if epoch.is_some_and(|e| e < row.epoch) {
                text += line;
                text += "\n";
            }
        }
        let opt = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
        let e = &row.evaluation;
        text += &format!(
            "{},{:.6e},{:.6},{},{},{:.6},{:.6},{},{:.1}\n",
            row.epoch,
            row.lr,
            row.train_loss,
            opt(e.light_top1),
            opt(e.light_top5),
            e.specialist_top1,
            e.specialist_top5,
            opt(e.ema_specialist_top1),
            row.seconds,
        );
        write(&path, text.as_bytes())?;
        Ok(text)
    }

    /// Open the run with the weights of `checkpoint` on `device`, whatever device it was
    /// trained on (checkpoints hold CPU tensors).
    pub fn load(&self, checkpoint: Checkpoint, device: Device) -> Result<LoadedRun, TrainError> {
        let recipe = self.read_recipe()?;
        let files = self.checkpoint(checkpoint)?;
        let (vs, model) = build(&recipe, &files, &files.weights, device)?;
        Ok(LoadedRun {
            recipe,
            vs,
            model,
            ema: None,
        })
    }

    /// [`RunDir::load`], with the EMA weights of the same checkpoint when the run kept
    /// them (what `eval` reports beside the weights themselves).
    pub fn load_with_ema(
        &self,
        checkpoint: Checkpoint,
        device: Device,
    ) -> Result<LoadedRun, TrainError> {
        let mut run = self.load(checkpoint, device)?;
        let files = self.checkpoint(checkpoint)?;
        if files.ema.exists() {
            run.ema = Some(build(&run.recipe, &files, &files.ema, device)?);
        }
        Ok(run)
    }
}

/// The model of `recipe` on `device` with the weights of `path`, one of `files`.
fn build(
    recipe: &Recipe,
    files: &CheckpointFiles,
    path: &Path,
    device: Device,
) -> Result<(nn::VarStore, Model), TrainError> {
    let vs = nn::VarStore::new(device);
    let model = Model::build(&vs.root(), recipe)?;
    let metadata = checkpoint::load(&vs, path)?;
    RunDir::verify(files, path, &metadata)?;
    Ok((vs, model))
}

/// Write `bytes` to `path` atomically, naming the file in an error.
pub(crate) fn write(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    atomic::write(path, bytes).map_err(TrainError::io(path))
}

pub(crate) fn write_json(path: &Path, value: &impl Serialize) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| TrainError::Run(format!("{}: could not encode ({e})", path.display())))?;
    write(path, text.as_bytes())
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &str,
) -> Result<T, TrainError> {
    let text = std::fs::read_to_string(path).map_err(TrainError::io(path))?;
    serde_json::from_str(&text)
        .map_err(|e| TrainError::Run(format!("{}: not a {what} ({e})", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> RunDir {
        let dir = std::env::temp_dir().join(format!("run-dir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        RunDir::new(dir)
    }

    #[test]
    fn metrics_round_trip_with_the_evaluation_at_the_top_level() {
        let run = scratch("metrics");
        let metrics = Metrics {
            evaluation: Evaluation {
                images: 10,
                specialist_top1: 0.5,
                light_top1: Some(0.25),
                ..Default::default()
            },
            validation: Some(Evaluation {
                images: 5,
                specialist_top1: 0.6,
                ..Default::default()
            }),
            epochs: 3,
            best_top1: 0.5,
            best_epoch: 2,
            train_seconds: 1.5,
        };
        run.write_metrics(&metrics).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.metrics_path()).unwrap()).unwrap();
        assert_eq!(json["specialist_top1"], 0.5);
        assert_eq!(json["validation"]["specialist_top1"], 0.6);
        assert_eq!(json["epochs"], 3);
        assert_eq!(run.read_metrics().unwrap(), metrics);
        std::fs::write(run.metrics_path(), "{\"epochs\": 1}").unwrap();
        let err = run.read_metrics().unwrap_err().to_string();
        assert!(err.contains("not a run's metrics"), "{err}");
        std::fs::remove_dir_all(run.path()).unwrap();
    }

    #[test]
    fn a_resumed_epoch_replaces_its_summary_row_and_later_ones() {
        let run = scratch("summary");
        let row = |epoch, loss| SummaryRow {
            epoch,
            lr: 0.1,
            train_loss: loss,
            evaluation: Evaluation::default(),
            seconds: 1.0,
        };
        run.append_summary(&row(1, 1.0)).unwrap();
        run.append_summary(&row(2, 2.0)).unwrap();
        run.append_summary(&row(3, 3.0)).unwrap();
        let text = run.append_summary(&row(2, 9.0)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], SUMMARY_HEADER);
        assert!(lines[1].starts_with("1,") && lines[2].starts_with("2,1.000000e-1,9.000000,"));
        std::fs::remove_dir_all(run.path()).unwrap();
    }

    #[test]
    fn opening_what_is_not_a_run_names_what_is_missing() {
        let run = scratch("empty");
        let err = run
            .load(Checkpoint::Best, Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("is not a run directory (no recipe.toml)"),
            "{err}"
        );
        run.write_recipe(&Recipe::default()).unwrap();
        let err = run
            .load(Checkpoint::Best, Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("has no best checkpoint"), "{err}");
        std::fs::remove_dir_all(run.path()).unwrap();
    }
}
