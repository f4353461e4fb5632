//! Errors of the file layer. Every message names the file, and the key or tensor at fault.

use std::path::{Path, PathBuf};

/// What can be wrong with a file lora reads or writes.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// A file or folder could not be opened, read or written.
    #[error("{path}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file is not valid JSON or lacks the expected fields: `FILE:LINE:COL: message`, as
    /// recipes and merge configurations report theirs.
    #[error("{}", json_message(path, key.as_deref(), error))]
    Json {
        /// The file.
        path: PathBuf,
        /// The key at fault (`rope_scaling.factor`, `target_modules[2]`), when known.
        key: Option<String>,
        /// serde_json's error, which knows the line and column.
        error: serde_json::Error,
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
    /// A file or folder is readable but not what lora can use (an adapter kind lora does not
    /// compute, a missing file).
    #[error("{path}: {message}")]
    Folder {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong, and what is supported.
        message: String,
    },
    /// The output exists already.
    #[error("{path}: the output folder exists; pass --force to replace it")]
    OutputExists {
        /// The output.
        path: PathBuf,
    },
    /// A value cannot be written in the format asked for (a tensor type the writer lacks, values
    /// that are not whole blocks).
    #[error("{0}")]
    Unsupported(String),
}

/// Result with [`FormatError`].
pub type Result<T, E = FormatError> = std::result::Result<T, E>;

impl FormatError {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Self::Io { path: path.as_ref().to_path_buf(), source }
    }

    /// A JSON error in `path`.
    pub fn json(path: impl AsRef<Path>, error: serde_json::Error) -> Self {
        Self::Json { path: path.as_ref().to_path_buf(), key: None, error }
    }

    /// A malformed safetensors file.
    pub fn safetensors(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Self::Safetensors { path: path.as_ref().to_path_buf(), message: message.into() }
    }

    /// A malformed GGUF file.
    pub fn gguf(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Self::Gguf { path: path.as_ref().to_path_buf(), message: message.into() }
    }

    /// A file or folder that is not what the command needs.
    pub fn folder(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Self::Folder { path: path.as_ref().to_path_buf(), message: message.into() }
    }
}

/// `FILE:LINE:COL: key: message`, without serde_json's own " at line L column C" suffix.
fn json_message(path: &Path, key: Option<&str>, e: &serde_json::Error) -> String {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full);
    let key = key.filter(|k| !k.is_empty() && *k != "." && *k != "?").map(|k| format!("{k}: ")).unwrap_or_default();
    if e.line() == 0 {
        format!("{}: {key}{message}", path.display())
    } else {
        format!("{}:{}:{}: {key}{message}", path.display(), e.line(), e.column())
    }
}

/// Parses JSON text of `path` into `T`; an error names the file, line, column and key.
pub fn from_json<T: serde::de::DeserializeOwned>(path: &Path, text: &[u8]) -> Result<T> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let key = e.path().to_string();
        FormatError::Json { path: path.to_path_buf(), key: Some(key), error: e.into_inner() }
    })?;
    de.end().map_err(|e| FormatError::json(path, e))?;
    Ok(value)
}
