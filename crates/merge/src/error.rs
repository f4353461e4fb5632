//! Errors of the merge engine. Every message names the file, tensor, module or key at fault; the
//! file layer's own errors pass through as [`MergeError::Format`].

use std::path::{Path, PathBuf};

use lora_formats::FormatError;

/// Everything that can go wrong while reading inputs, merging, or writing the output folder.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// A file is unreadable, malformed or not what lora can use (the file layer's errors).
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A merge configuration (TOML) is malformed or has unknown keys. A message that starts with
    /// `line:col:` is joined to the path as a recipe's is (`merge.toml:3:9: ...`).
    #[error("{}{}{}", .path.display(), if .message.starts_with(|c: char| c.is_ascii_digit()) { ":" } else { ": " }, .message)]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong, with line and column when known.
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
    /// A parameter is missing, out of range or not valid for the method.
    #[error("{0}")]
    Parameter(String),
}

/// Result with [`MergeError`].
pub type Result<T, E = MergeError> = std::result::Result<T, E>;

impl MergeError {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        FormatError::io(path, source).into()
    }

    /// A JSON error in `path`.
    pub fn json(path: impl AsRef<Path>, source: serde_json::Error) -> Self {
        FormatError::json(path, source).into()
    }

    /// A malformed safetensors file.
    pub fn safetensors(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        FormatError::safetensors(path, message).into()
    }

    /// A malformed GGUF file.
    pub fn gguf(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        FormatError::gguf(path, message).into()
    }

    /// A folder that is not what the command needs.
    pub fn folder(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        FormatError::folder(path, message).into()
    }

    /// The output exists and `--force` was not given.
    pub fn output_exists(path: impl AsRef<Path>) -> Self {
        FormatError::OutputExists { path: path.as_ref().to_path_buf() }.into()
    }
}
