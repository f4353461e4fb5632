//! Errors of the merge engine. Every message names the file, tensor, module or key at fault.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while reading inputs, merging, or writing the output folder.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// A file or folder could not be opened, read or written.
    #[error("{path}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file is not valid JSON or lacks the expected fields.
    #[error("{path}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// A merge configuration (TOML) is malformed or has unknown keys. A message that starts with
    /// `line:col:` is joined to the path as a recipe's is (`merge.toml:3:9: ...`).
    #[error("{}{}{}", .path.display(), if .message.starts_with(|c: char| c.is_ascii_digit()) { ":" } else { ": " }, .message)]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong, with line and column when known.
        message: String,
    },
    /// A safetensors file is malformed (truncated, lying header, overlapping ranges, unknown dtype).
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors {
        /// The weights file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A GGUF file is malformed or holds what lora cannot read.
    #[error("{path}: {message}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key or tensor.
        message: String,
    },
    /// A folder is not a model or adapter folder lora can read.
    #[error("{path}: {message}")]
    Folder {
        /// The folder.
        path: PathBuf,
        /// What is missing.
        message: String,
    },
    /// The inputs of a merge do not fit together (tensor sets, shapes, adapter targets).
    #[error("{0}")]
    Mismatch(String),
    /// A merge produced NaN or infinite values (PEFT's `safe_merge` check).
    #[error(
        "tensor '{tensor}': the merge produced {count} non-finite values (NaN or inf); \
         check the inputs and weights, or pass --allow-nonfinite to write them anyway"
    )]
    NonFinite {
        /// The output tensor.
        tensor: String,
        /// How many values are not finite.
        count: usize,
    },
    /// The output folder exists already.
    #[error("{path}: the output folder exists; pass --force to replace it")]
    OutputExists {
        /// The output folder.
        path: PathBuf,
    },
    /// A parameter is missing, out of range or not valid for the method.
    #[error("{0}")]
    Parameter(String),
}

/// Result with [`MergeError`].
pub type Result<T, E = MergeError> = std::result::Result<T, E>;

impl MergeError {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Self::Io { path: path.as_ref().to_path_buf(), source }
    }

    /// A malformed safetensors file.
    pub fn safetensors(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Self::Safetensors { path: path.as_ref().to_path_buf(), message: message.into() }
    }

    /// A malformed GGUF file.
    pub fn gguf(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Self::Gguf { path: path.as_ref().to_path_buf(), message: message.into() }
    }

    /// A folder that is not what the command needs.
    pub fn folder(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Self::Folder { path: path.as_ref().to_path_buf(), message: message.into() }
    }
}
