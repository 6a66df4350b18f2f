//! Errors of the data pipeline.

use std::path::PathBuf;

/// What went wrong reading or preparing data. Each message names the file or sample.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file whose content is not what its format says.
    #[error("{path}: {problem}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, with what was expected and what came.
        problem: String,
    },
    /// One sample that cannot be used (a corrupt image, a label out of range...).
    #[error("{sample}: {problem}")]
    Sample {
        /// The file, or the dataset and index.
        sample: String,
        /// What is wrong.
        problem: String,
    },
    /// A dataset folder with nothing usable in it.
    #[error("{path}: {problem}")]
    Empty {
        /// The folder.
        path: PathBuf,
        /// What was expected there.
        problem: String,
    },
    /// A pipeline setting that cannot work.
    #[error("invalid data configuration: {0}")]
    Config(String),
    /// More bad samples than `data.max_bad_fraction` allows, or no good one.
    #[error("{0}")]
    TooManyBad(String),
    /// libtorch reported an error while making tensors.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        Self::Format {
            path: path.into(),
            problem: problem.into(),
        }
    }

    pub(crate) fn sample(sample: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Sample {
            sample: sample.into(),
            problem: problem.into(),
        }
    }
}
