//! How a checkpoint is committed as a whole or not at all.
//!
//! A checkpoint is a set of files: weights, EMA weights, optimizer state, and the trainer
//! state. The data files of each save carry a generation in their names
//! (`last-g7.safetensors`, `last-g7-ema.safetensors`, `last-g7-optim.safetensors`) and in
//! their metadata; the trainer state `<name>.json` is the commit: written atomically after
//! every data file is durable, it names the generation and each file's size. Until it is
//! replaced, the previous generation's files stay untouched, so a crash or a full disk at
//! any point of a save leaves the previous checkpoint complete; the older generation is
//! removed after the commit, and files of a generation no commit names (a save that did
//! not finish) are removed when a run starts or resumes.
//!
//! Readers follow the commit and check that every file it names is there with its size
//! and, when loaded, carries its generation. Runs written before generations (state files
//! without one) are read with their old file names.

use super::{RunDir, TrainerState};
use crate::error::TrainError;
use crate::recipe::Recipe;
use basis_models::checkpoint;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use tch::{nn, Tensor};

/// A checkpoint of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    /// The end of the last epoch trained (what `--resume` continues).
    Last,
    /// The epoch with the best specialist top-1 so far.
    Best,
    /// The end of epoch `K` (every `train.checkpoint_every` epochs).
    Epoch(usize),
}

impl Checkpoint {
    /// The checkpoint whose commit is the file `name` (`last.json`, `epoch-3.json`, ...).
    fn of_commit(name: &str) -> Option<Self> {
        match name.strip_suffix(".json")? {
            "last" => Some(Checkpoint::Last),
            "best" => Some(Checkpoint::Best),
            s => s
                .strip_prefix("epoch-")?
                .parse()
                .ok()
                .map(Checkpoint::Epoch),
        }
    }
}

/// Whether `name` is a data file of some generation (`<name>-gG[-ema|-optim].safetensors`).
fn is_generation_file(name: &str) -> bool {
    name.strip_suffix(".safetensors").is_some_and(|stem| {
        stem.split('-').any(|part| {
            part.strip_prefix('g')
                .is_some_and(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()))
        })
    })
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Checkpoint::Last => f.write_str("last"),
            Checkpoint::Best => f.write_str("best"),
            Checkpoint::Epoch(k) => write!(f, "epoch-{k}"),
        }
    }
}

/// The files of one committed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointFiles {
    /// Model weights.
    pub weights: PathBuf,
    /// EMA weights (present when the recipe keeps an EMA).
    pub ema: PathBuf,
    /// Optimizer state.
    pub optimizer: PathBuf,
    /// Trainer state ([`TrainerState`]): the commit, written last.
    pub state: PathBuf,
    /// The generation of the save (0: a run written before generations).
    pub generation: u64,
    /// The checkpoint the files belong to.
    pub checkpoint: Checkpoint,
}

/// `<name>.json`: the trainer state, the generation and the size of each data file.
#[derive(Serialize, Deserialize)]
struct Commit {
    #[serde(flatten)]
    state: TrainerState,
    #[serde(default)]
    generation: u64,
    #[serde(default)]
    files: BTreeMap<String, u64>,
}

/// The metadata key of a data file's generation.
const GENERATION: &str = "generation";

impl RunDir {
    /// The files of `checkpoint` at `generation` (no file is read).
    ///
    /// ```
    /// use basis_train::run_dir::{Checkpoint, RunDir};
    /// let files = RunDir::new("runs/x").checkpoint_files(Checkpoint::Epoch(3), 2);
    /// assert_eq!(files.optimizer, std::path::Path::new("runs/x/epoch-3-g2-optim.safetensors"));
    /// assert_eq!(files.state, std::path::Path::new("runs/x/epoch-3.json"));
    /// ```
    pub fn checkpoint_files(&self, checkpoint: Checkpoint, generation: u64) -> CheckpointFiles {
        let stem = match generation {
            0 => checkpoint.to_string(),
            g => format!("{checkpoint}-g{g}"),
        };
        let file = |suffix: &str| self.path().join(format!("{stem}{suffix}"));
        CheckpointFiles {
            weights: file(".safetensors"),
            ema: file("-ema.safetensors"),
            optimizer: file("-optim.safetensors"),
            state: self.path().join(format!("{checkpoint}.json")),
            generation,
            checkpoint,
        }
    }

    /// The committed files of `checkpoint`, checked: every file its commit names is there
    /// with the size the commit gives.
    pub fn checkpoint(&self, checkpoint: Checkpoint) -> Result<CheckpointFiles, TrainError> {
        Ok(self.committed(checkpoint)?.1)
    }

    /// The trainer state of `checkpoint` and its checked files.
    pub fn committed(
        &self,
        checkpoint: Checkpoint,
    ) -> Result<(TrainerState, CheckpointFiles), TrainError> {
        let pointer = self.path().join(format!("{checkpoint}.json"));
        if !pointer.exists() {
            return Err(TrainError::Run(format!(
                "{} has no {checkpoint} checkpoint ({} is missing)",
                self.path().display(),
                pointer.display()
            )));
        }
        let commit: Commit = super::read_json(&pointer, "trainer state")?;
        let files = self.checkpoint_files(checkpoint, commit.generation);
        for (name, size) in &commit.files {
            let path = self.path().join(name);
            match std::fs::metadata(&path) {
                Ok(m) if m.len() == *size => {}
                Ok(m) => {
                    return Err(TrainError::Run(format!(
                        "the {checkpoint} checkpoint of {} is damaged: {} is {} bytes, its commit says {size}",
                        self.path().display(),
                        path.display(),
                        m.len()
                    )))
                }
                Err(_) => {
                    return Err(TrainError::Run(format!(
                        "the {checkpoint} checkpoint of {} is incomplete: {} is missing",
                        self.path().display(),
                        path.display()
                    )))
                }
            }
        }
        Ok((commit.state, files))
    }

    /// Whether the directory holds a run that can be resumed (a committed `last`).
    pub fn holds_run(&self) -> bool {
        self.path().join("last.json").exists()
    }

    /// The trainer state of `checkpoint`.
    pub fn read_state(&self, checkpoint: Checkpoint) -> Result<TrainerState, TrainError> {
        Ok(self.committed(checkpoint)?.0)
    }

    /// The newest checkpoint a run can resume from: `last` when it checks out, else the
    /// `epoch-K` of the highest `K` that does, with the reason `last` was passed over.
    pub fn newest_complete(
        &self,
    ) -> Result<(Checkpoint, TrainerState, CheckpointFiles, Option<String>), TrainError> {
        let last = match self.committed(Checkpoint::Last) {
            Ok((state, files)) => return Ok((Checkpoint::Last, state, files, None)),
            Err(e) => e.to_string(),
        };
        let mut epochs: Vec<usize> = self
            .entries()
            .iter()
            .filter_map(|n| match Checkpoint::of_commit(n)? {
                Checkpoint::Epoch(k) => Some(k),
                _ => None,
            })
            .collect();
        epochs.sort_unstable_by(|a, b| b.cmp(a));
        for k in epochs {
            if let Ok((state, files)) = self.committed(Checkpoint::Epoch(k)) {
                return Ok((Checkpoint::Epoch(k), state, files, Some(last)));
            }
        }
        Err(TrainError::Run(format!(
            "{last}, and no epoch-K checkpoint is complete: nothing to resume from"
        )))
    }

    /// Check that a data file loaded from `files` carries their generation.
    pub(crate) fn verify(
        files: &CheckpointFiles,
        path: &Path,
        metadata: &checkpoint::Metadata,
    ) -> Result<(), TrainError> {
        if files.generation == 0 {
            return Ok(());
        }
        let get = |key: &str| metadata.get(key).map(String::as_str).unwrap_or("none");
        let (name, generation) = (get("checkpoint"), get(GENERATION));
        if name != files.checkpoint.to_string() || generation != files.generation.to_string() {
            return Err(TrainError::Run(format!(
                "{} belongs to the {name} checkpoint's generation {generation}, not to the committed {} checkpoint (generation {}): the checkpoint is a mixture of two saves",
                path.display(),
                files.checkpoint,
                files.generation
            )));
        }
        Ok(())
    }

    /// Write `checkpoint`: the data files of a new generation, durable, then the commit;
    /// then the previous generation's files go.
    pub fn write_checkpoint(
        &self,
        checkpoint: Checkpoint,
        recipe: &Recipe,
        weights: &nn::VarStore,
        ema: Option<&nn::VarStore>,
        optimizer: &[(String, Tensor)],
        state: &TrainerState,
    ) -> Result<(), TrainError> {
        let previous = self.committed(checkpoint).ok().map(|(_, f)| f);
        let generation = previous.as_ref().map_or(0, |f| f.generation) + 1;
        let files = self.checkpoint_files(checkpoint, generation);
        let meta = checkpoint::Metadata::from([
            ("recipe".to_string(), recipe.to_toml()),
            ("checkpoint".to_string(), checkpoint.to_string()),
            (GENERATION.to_string(), generation.to_string()),
        ]);
        let variables =
            |vs: &nn::VarStore| -> Vec<(String, Tensor)> { vs.variables().into_iter().collect() };
        let mut written = vec![files.weights.clone()];
        checkpoint::write(&files.weights, &variables(weights), &meta)?;
        if let Some(ema) = ema {
            checkpoint::write(&files.ema, &variables(ema), &meta)?;
            written.push(files.ema.clone());
        }
        checkpoint::write(&files.optimizer, optimizer, &meta)?;
        written.push(files.optimizer.clone());
        let mut sizes = BTreeMap::new();
        for path in &written {
            let size = std::fs::metadata(path).map_err(TrainError::io(path))?.len();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            sizes.insert(name.into_owned(), size);
        }
        let commit = Commit {
            state: state.clone(),
            generation,
            files: sizes,
        };
        super::write_json(&files.state, &commit)?;
        if let Some(old) = previous {
            for path in [old.weights, old.ema, old.optimizer] {
                if !written.contains(&path) {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        Ok(())
    }

    /// Remove what an interrupted save left: temporary files, and data files of a
    /// generation no commit names.
    pub fn remove_stale_files(&self) -> Result<(), TrainError> {
        let mut keep = Vec::new();
        for name in self.entries() {
            let Some(checkpoint) = Checkpoint::of_commit(&name) else {
                continue;
            };
            if let Ok(commit) = super::read_json::<Commit>(&self.path().join(&name), "commit") {
                let f = self.checkpoint_files(checkpoint, commit.generation);
                keep.extend([f.weights, f.ema, f.optimizer]);
            }
        }
        for name in self.entries() {
            let path = self.path().join(&name);
            if name.ends_with(".tmp") || (is_generation_file(&name) && !keep.contains(&path)) {
                std::fs::remove_file(&path).map_err(TrainError::io(&path))?;
            }
        }
        Ok(())
    }

    fn entries(&self) -> Vec<String> {
        std::fs::read_dir(self.path())
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_and_generation_file_names_are_told_apart() {
        assert_eq!(Checkpoint::of_commit("last.json"), Some(Checkpoint::Last));
        assert_eq!(
            Checkpoint::of_commit("epoch-12.json"),
            Some(Checkpoint::Epoch(12))
        );
        assert_eq!(Checkpoint::of_commit("metrics.json"), None);
        assert_eq!(Checkpoint::of_commit("epoch-x.json"), None);
        for name in [
            "last-g7.safetensors",
            "epoch-3-g2-optim.safetensors",
            "best-g1-ema.safetensors",
        ] {
            assert!(is_generation_file(name), "{name}");
        }
        for name in [
            "last.safetensors",
            "my-graph.safetensors",
            "last-g.safetensors",
            "last-g7.json",
        ] {
            assert!(!is_generation_file(name), "{name}");
        }
    }
}
