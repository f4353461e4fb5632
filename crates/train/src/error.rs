//! Errors of training: each names the recipe key, data file and line, or checkpoint at fault.

use std::path::PathBuf;

/// Everything that can stop a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The recipe is invalid; the message carries `file:line:col` and the key.
    #[error("{0}")]
    Recipe(String),
    /// A data file is invalid; the message carries `file:line`.
    #[error("{0}")]
    Data(String),
    /// The model core refused something (loading, shapes, targets).
    #[error(transparent)]
    Core(#[from] lora_core::CoreError),
    /// A file is unreadable or malformed (the file layer's errors).
    #[error(transparent)]
    Format(#[from] lora_formats::FormatError),
    /// A file could not be read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The output folder exists and the run may not overwrite it.
    #[error("{0} already exists; pass --force to overwrite it or --resume to continue it")]
    OutputExists(PathBuf),
    /// The run was interrupted (Ctrl-C) after saving a checkpoint.
    #[error("interrupted at step {step}; checkpoint saved in {checkpoint}; continue with --resume")]
    Interrupted {
        /// Last completed step.
        step: u64,
        /// Where the checkpoint is.
        checkpoint: PathBuf,
    },
    /// Training produced a non-finite loss.
    #[error("loss became {value} at step {step}; lower the learning rate or check the data")]
    NonFinite {
        /// The step.
        step: u64,
        /// The value.
        value: f64,
    },
    /// A reproducibility check found a difference.
    #[error("{0}")]
    Verify(String),
    /// A collective of distributed training failed (a rank died, timed out or disagreed).
    /// (Not `#[from]`: that would make it the source too, and error chains would say it twice.)
    #[error("distributed training: {0}")]
    Distributed(crate::distributed::CommError),
}

impl From<crate::distributed::CommError> for TrainError {
    fn from(e: crate::distributed::CommError) -> Self {
        Self::Distributed(e)
    }
}

/// Result alias of lora-train.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}
