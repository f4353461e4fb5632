//! Errors of the model core. Every message names the file, key or tensor at fault.

use std::path::PathBuf;

use lora_formats::FormatError;

/// Everything that can go wrong while reading a model folder or running a model.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A file is unreadable, malformed or not what lora can use (the file layer's errors:
    /// I/O, JSON, safetensors, GGUF, adapter configs).
    #[error(transparent)]
    Format(#[from] FormatError),
    /// `config.json` is readable but describes something lora does not support.
    #[error("{path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong, and what is supported.
        message: String,
    },
    /// A tensor the model needs is not in the weight files.
    #[error("{dir}: missing tensor '{name}' (expected shape {expected:?})")]
    MissingTensor {
        /// The model folder or file looked in.
        dir: PathBuf,
        /// The Hugging Face tensor name.
        name: String,
        /// The shape the model expects.
        expected: Vec<usize>,
    },
    /// A tensor exists but has the wrong shape.
    #[error("{path}: tensor '{name}' has shape {found:?}, the config implies {expected:?}")]
    ShapeMismatch {
        /// The weights file that holds it.
        path: PathBuf,
        /// The Hugging Face tensor name.
        name: String,
        /// The shape the model expects.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// Tensors in the files that the model does not use: loading them silently would hide a wrong config.
    #[error("{dir}: {} unexpected tensor(s) not used by the model: {}", names.len(), preview(names))]
    UnexpectedTensors {
        /// The model folder.
        dir: PathBuf,
        /// Their names.
        names: Vec<String>,
    },
    /// A tensor has a dtype lora cannot convert to floating point.
    #[error("{path}: tensor '{name}' has dtype {dtype}, expected F32, F16 or BF16")]
    UnsupportedDtype {
        /// The weights file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Its dtype as written in the header.
        dtype: String,
    },
    /// The tokenizer could not be loaded or used.
    #[error("{path}: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// The tokenizers crate's message.
        message: String,
    },
    /// A GGUF file is malformed, or describes what lora does not support (its message names the file,
    /// key or tensor).
    #[error("{0}")]
    Gguf(String),
    /// A request the model cannot serve (empty prompt, sequence longer than the model allows, ...).
    #[error("{0}")]
    Invalid(String),
}

fn preview(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
    let more = if names.len() > 5 { format!(", ... ({} more)", names.len() - 5) } else { String::new() };
    format!("{}{}", shown.join(", "), more)
}

/// Result alias of the model core.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

impl CoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::io(path.into(), source).into()
    }
    pub(crate) fn json(path: impl Into<PathBuf>, source: serde_json::Error) -> Self {
        FormatError::json(path.into(), source).into()
    }
    pub(crate) fn safetensors(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        FormatError::safetensors(path.into(), message).into()
    }
    pub(crate) fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Config { path: path.into(), message: message.into() }
    }
}
