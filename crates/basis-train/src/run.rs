//! [`Run`]: the training loop. It builds the model, EMA, optimizer and loaders of a recipe,
//! trains epoch by epoch (joint loss, schedule, data-parallel averaging), evaluates,
//! reports to an [`Observer`] and writes the [`RunDir`]; [`Run::resume`] continues a run
//! from its `last` checkpoint exactly as if it had never stopped.

mod epoch;

use epoch::EpochTotals;

use crate::data::{Loader, Shard, Split};
use crate::device::DeviceChoice;
use crate::distributed::DataParallel;
use crate::error::TrainError;
use crate::evaluation::{evaluate, Evaluation};
use crate::init::Initialization;
use crate::loaders::{eval_loader, train_loader};
use crate::model::Model;
use crate::optim::{Ema, Optimizer};
use crate::progress::{EpochResult, Observer, Silent};
use crate::recipe::Recipe;
use crate::run_dir::{write, Checkpoint, Metrics, RunDir, RunLock, SummaryRow, TrainerState};
use crate::teacher::Teacher;
use basis_amp::{LossScaler, Precision};
use basis_dist::ProcessGroup;
use basis_models::checkpoint;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{nn, Device};

/// A training run in a directory.
pub struct Run {
    recipe: Recipe,
    dir: RunDir,
    vs: nn::VarStore,
    model: Model,
    ema: Option<(nn::VarStore, Model, Ema)>,
    optimizer: Optimizer,
    state: TrainerState,
    train: Loader,
    /// The validation split: every epoch's evaluation, the `best` checkpoint.
    val: Loader,
    /// The test split: evaluated once, at the end, to report.
    test: Loader,
    resolution: i64,
    teacher: Option<Teacher>,
    parallel: Option<DataParallel>,
    observer: Box<dyn Observer>,
    device: Device,
    /// The folder's lock, held by rank 0 while it trains.
    lock: Option<RunLock>,
    /// Why the run resumed from an `epoch-K` checkpoint rather than `last`, when it did.
    resume_note: Option<String>,
    /// What the start from pretrained weights changed or left out, one line each.
    notes: Vec<String>,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The run directory.
    pub dir: PathBuf,
    /// What `metrics.json` holds: the last evaluation and the run's totals.
    pub metrics: Metrics,
    /// The trainer state at the end.
    pub state: TrainerState,
}

impl Run {
    /// A new run of `recipe` in `dir` (created; refused when it already holds a run).
    pub fn new(recipe: Recipe, dir: &Path) -> Result<Self, TrainError> {
        Self::create(recipe, dir, None)
    }

    /// One process of a data-parallel run of `recipe` in `dir`: every rank calls it with
    /// the same recipe and directory; rank 0 alone writes the directory (recipe,
    /// checkpoints, logs, metrics, plots) and evaluates.
    pub fn new_distributed(
        recipe: Recipe,
        dir: &Path,
        group: Arc<ProcessGroup>,
    ) -> Result<Self, TrainError> {
        Self::create(recipe, dir, Some(group))
    }

    fn create(
        recipe: Recipe,
        dir: &Path,
        group: Option<Arc<ProcessGroup>>,
    ) -> Result<Self, TrainError> {
        recipe.validate()?;
        if let Some(g) = &group {
            if recipe.train.batch_size % g.world_size() != 0 {
                return Err(TrainError::Run(format!(
                    "train.batch_size {} does not split over {} processes: use a multiple of {}",
                    recipe.train.batch_size,
                    g.world_size(),
                    g.world_size()
                )));
            }
        }
        // A device that cannot be had is refused before anything is created.
        recipe
            .train
            .device
            .resolve(group.as_ref().map(|g| g.local_rank()))?;
        let main = group.as_ref().is_none_or(|g| g.is_main());
        let run_dir = RunDir::new(dir);
        if main {
            check_new_folder(dir)?;
        }
        // Pretrained weights, model, data and loaders first: a refused recipe, weight file
        // or dataset leaves nothing behind.
        let init = Initialization::read(&recipe)?;
        let mut recipe = recipe;
        let notes = init.resolve(&mut recipe)?;
        let mut run = Self::build(recipe, run_dir, group, Some(&init))?;
        run.notes.splice(0..0, notes);
        if main {
            std::fs::create_dir_all(dir).map_err(TrainError::io(dir))?;
            run.lock = Some(run.dir.lock()?);
        }
        run.broadcast_state()?;
        if main {
            run.dir.write_recipe(&run.recipe)?;
        }
        Ok(run)
    }

    /// Resume the run in `dir` from its `last` checkpoint.
    pub fn resume(dir: &Path) -> Result<Self, TrainError> {
        Self::resume_with(dir, None, None)
    }

    /// Resume a data-parallel run: every rank reads the run directory (a folder all ranks
    /// see), then takes rank 0's weights.
    pub fn resume_distributed(dir: &Path, group: Arc<ProcessGroup>) -> Result<Self, TrainError> {
        Self::resume_with(dir, Some(group), None)
    }

    /// Resume the run in `dir`, data-parallel when `group` is given, on `device` when given
    /// instead of the recipe's `train.device` (checkpoints are device-independent: a run
    /// trained on a GPU resumes on the CPU and the other way round).
    pub fn resume_with(
        dir: &Path,
        group: Option<Arc<ProcessGroup>>,
        device: Option<DeviceChoice>,
    ) -> Result<Self, TrainError> {
        let run_dir = RunDir::new(dir);
        let mut recipe = run_dir.read_recipe()?;
        if let Some(device) = device {
            recipe.train.device = device;
        }
        let main = group.as_ref().is_none_or(|g| g.is_main());
        let lock = if main {
            let lock = run_dir.lock()?;
            run_dir.remove_stale_files()?;
            Some(lock)
        } else {
            None
        };
        let (from, state, files, passed_over) = run_dir.newest_complete()?;
        let mut run = Self::build(recipe, run_dir, group, None)?;
        run.lock = lock;
        run.resume_note =
            passed_over.map(|why| format!("{why}; resuming from the {from} checkpoint instead"));
        run.state = state;
        let load = |vs: &nn::VarStore, path: &Path| -> Result<(), TrainError> {
            let metadata = checkpoint::load(vs, path)?;
            RunDir::verify(&files, path, &metadata)
        };
        load(&run.vs, &files.weights)?;
        if let Some((ema_vs, _, _)) = &run.ema {
            load(ema_vs, &files.ema)?;
        }
        let (optim, metadata) = checkpoint::read(&files.optimizer)?;
        RunDir::verify(&files, &files.optimizer, &metadata)?;
        run.optimizer
            .load_state(&optim)
            .map_err(|e| TrainError::Run(format!("{}: {e}", files.optimizer.display())))?;
        run.broadcast_state()?;
        Ok(run)
    }

    /// Why a resumed run continues from an `epoch-K` checkpoint rather than `last` (which
    /// was incomplete or damaged), when it does.
    pub fn resume_note(&self) -> Option<&str> {
        self.resume_note.as_deref()
    }

    /// What a new run's start from pretrained weights changed or left out, one line each
    /// beginning with `note:` or `warning:` (`model.batch_norm_eps` recorded, a classifier
    /// layer started new).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Report progress to `observer` (the default reports nothing).
    pub fn observe(&mut self, observer: Box<dyn Observer>) {
        self.observer = observer;
    }

    /// Give every rank rank 0's weights (model and EMA).
    fn broadcast_state(&self) -> Result<(), TrainError> {
        if let Some(p) = &self.parallel {
            p.broadcast_all(&self.vs)?;
            if let Some((ema_vs, _, _)) = &self.ema {
                p.broadcast_all(ema_vs)?;
            }
        }
        Ok(())
    }

    /// Whether this process writes the run's files (rank 0, or a single process).
    pub fn is_main(&self) -> bool {
        self.parallel.as_ref().is_none_or(|p| p.rank() == 0)
    }

    /// The run directory.
    pub fn dir(&self) -> &RunDir {
        &self.dir
    }

    /// The run's parts; a new run's model starts from `init`'s weights.
    fn build(
        recipe: Recipe,
        dir: RunDir,
        group: Option<Arc<ProcessGroup>>,
        init: Option<&Initialization>,
    ) -> Result<Self, TrainError> {
        let device = recipe
            .train
            .device
            .resolve(group.as_ref().map(|g| g.local_rank()))?;
        if recipe.train.threads > 0 {
            tch::set_num_threads(recipe.train.threads as i32);
        }
        basis_amp::set_deterministic(recipe.train.deterministic)?;
        tch::manual_seed(recipe.train.seed as i64);
        let resolution = recipe.basisnet()?.resolution;
        let vs = nn::VarStore::new(device);
        let model = Model::build(&vs.root(), &recipe)?;
        let notes = match init {
            Some(init) => init.apply(&model, &recipe)?,
            None => Vec::new(),
        };
        let ema = match recipe.train.ema_decay {
            Some(decay) => {
                let ema_vs = nn::VarStore::new(device);
                let ema_model = Model::build(&ema_vs.root(), &recipe)?;
                let ema = Ema::new(&vs, &ema_vs, decay).map_err(TrainError::Run)?;
                Some((ema_vs, ema_model, ema))
            }
            None => None,
        };
        let optimizer = Optimizer::new(&vs, recipe.optim.clone());
        let shard = group
            .as_ref()
            .map(|g| Shard {
                index: g.rank(),
                count: g.world_size(),
            })
            .unwrap_or_default();
        let train = train_loader(&recipe, shard)?;
        let val = eval_loader(&recipe, Split::Val)?;
        let test = eval_loader(&recipe, Split::Test)?;
        let teacher = recipe
            .loss
            .teacher
            .as_deref()
            .map(|path| Teacher::load(path, device))
            .transpose()?;
        let state = TrainerState {
            epoch: 0,
            step: 0,
            best_top1: -1.0,
            best_epoch: 0,
            seed: recipe.train.seed,
            loss_scaler: (recipe.train.precision == Precision::Fp16).then(LossScaler::default),
        };
        let parallel = group
            .map(|g| DataParallel::new(g, &vs, &recipe.distributed))
            .transpose()?;
        Ok(Self {
            resolution,
            recipe,
            dir,
            vs,
            model,
            ema,
            optimizer,
            state,
            train,
            val,
            test,
            teacher,
            parallel,
            observer: Box::new(Silent),
            device,
            lock: None,
            resume_note: None,
            notes,
        })
    }

    /// The device the run trains on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The recipe being trained.
    pub fn recipe(&self) -> &Recipe {
        &self.recipe
    }

    /// The model being trained.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The variables of the model.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Train up to `recipe.train.epochs`, evaluating and checkpointing every epoch.
    pub fn train(&mut self) -> Result<RunSummary, TrainError> {
        self.train_until(self.recipe.train.epochs)
    }

    /// Train up to epoch `stop` (at most the recipe's epochs) and stop there, as if
    /// interrupted at that epoch boundary; [`Run::resume`] continues.
    pub fn train_until(&mut self, stop: usize) -> Result<RunSummary, TrainError> {
        let stop = stop.min(self.recipe.train.epochs);
        let mut train_seconds = 0.0;
        let mut validation = Evaluation::default();
        let main = self.is_main();
        if self.state.epoch >= stop && main {
            validation = self.evaluate(&self.val)?;
        }
        while self.state.epoch < stop {
            let totals = self.train_epoch()?;
            train_seconds += totals.seconds;
            if !main {
                continue;
            }
            validation = self.evaluate(&self.val)?;
            self.end_epoch(&totals, &validation)?;
        }
        // The test split reports the final weights; nothing is chosen on it.
        let evaluation = match main {
            true => self.evaluate(&self.test)?,
            false => Evaluation::default(),
        };
        let metrics = Metrics {
            evaluation,
            validation: Some(validation),
            epochs: self.state.epoch,
            best_top1: self.state.best_top1,
            best_epoch: self.state.best_epoch,
            train_seconds,
        };
        if main {
            self.finish(&metrics)?;
        }
        Ok(RunSummary {
            dir: self.dir.path().to_path_buf(),
            metrics,
            state: self.state.clone(),
        })
    }

    /// After an epoch (rank 0): best so far, `summary.csv`, the observer, checkpoints.
    fn end_epoch(
        &mut self,
        totals: &EpochTotals,
        evaluation: &Evaluation,
    ) -> Result<(), TrainError> {
        let improved = evaluation.specialist_top1 > self.state.best_top1;
        if improved {
            self.state.best_top1 = evaluation.specialist_top1;
            self.state.best_epoch = self.state.epoch;
        }
        let text = self.dir.append_summary(&SummaryRow {
            epoch: self.state.epoch,
            lr: totals.lr,
            train_loss: totals.loss,
            evaluation: evaluation.clone(),
            seconds: totals.seconds,
        })?;
        write(
            &self.dir.plot_path("curves"),
            crate::plot::training_curves(&text).as_bytes(),
        )?;
        self.observer.epoch(&EpochResult {
            epoch: self.state.epoch,
            epochs: self.recipe.train.epochs,
            train_loss: totals.loss,
            images: totals.images,
            seconds: totals.seconds,
            evaluation: evaluation.clone(),
            processes: self.parallel.as_ref().map_or(1, |p| p.world_size()),
            averaging_seconds: totals.averaging,
            skipped_steps: totals.skipped_steps,
        });
        // `last` is committed last: a crash before it resumes from the previous `last`,
        // which trains this epoch again and saves `best` and `epoch-K` again.
        if improved {
            self.save_checkpoint(Checkpoint::Best)?;
        }
        let every = self.recipe.train.checkpoint_every;
        if every > 0 && self.state.epoch % every == 0 {
            self.save_checkpoint(Checkpoint::Epoch(self.state.epoch))?;
        }
        self.save_checkpoint(Checkpoint::Last)?;
        Ok(())
    }

    /// At the end (rank 0): `metrics.json` and the plots of the last evaluation.
    fn finish(&self, metrics: &Metrics) -> Result<(), TrainError> {
        self.dir.write_metrics(metrics)?;
        let e = &metrics.evaluation;
        if !e.early_exit.is_empty() {
            let svg = crate::plot::early_exit_curve(&e.early_exit);
            write(&self.dir.plot_path("early_exit"), svg.as_bytes())?;
        }
        if let Some(stats) = &e.coefficients {
            let svg = crate::plot::coefficient_heatmap(stats, self.test.dataset().classes());
            write(&self.dir.plot_path("coefficients"), svg.as_bytes())?;
        }
        Ok(())
    }

    fn evaluate(&self, loader: &Loader) -> Result<Evaluation, TrainError> {
        evaluate(
            &self.model,
            self.ema.as_ref().map(|(_, m, _)| m),
            loader,
            &self.recipe.train.exit_thresholds,
            self.resolution,
        )
    }

    fn save_checkpoint(&self, checkpoint: Checkpoint) -> Result<(), TrainError> {
        self.dir.write_checkpoint(
            checkpoint,
            &self.recipe,
            &self.vs,
            self.ema.as_ref().map(|(vs, _, _)| vs),
            &self.optimizer.state_tensors(),
            &self.state,
        )
    }
}

/// `train --out` takes a new folder or an empty one: anything else is refused untouched.
fn check_new_folder(dir: &Path) -> Result<(), TrainError> {
    if RunDir::new(dir).holds_run() {
        return Err(TrainError::Run(format!(
            "{} already holds a run; resume it with --resume or choose another directory",
            dir.display()
        )));
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return match dir.exists() {
            true => Err(TrainError::Run(format!(
                "{} exists and is not a folder; choose a new or empty folder for the run",
                dir.display()
            ))),
            false => Ok(()),
        };
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    names.sort();
    let shown = names.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    let more = if names.len() > 3 { ", ..." } else { "" };
    Err(TrainError::Run(format!(
        "{} is not empty (it holds {shown}{more}); a run starts in a new or empty folder, so nothing of yours is overwritten: choose another --out",
        dir.display()
    )))
}
