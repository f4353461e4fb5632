//! lora's file formats, in one place and without burn: [`safetensors`] (a validating, memory-mapped
//! reader and a streaming sharded writer), [`gguf`] (llama.cpp's and Ollama's format: read,
//! dequantize, write, and SentencePiece vocabularies), [`hf_config`] (a model's `config.json`),
//! [`peft`] (PEFT's `adapter_config.json`), [`nf4`] (bitsandbytes' 4-bit NormalFloat storage), [`one_or_many`] (a field of either that is one value or a list),
//! [`dtype`] (the element types they share) and [`atomic`] writes. `lora-merge` and `lora-core`
//! both read and write through here, so a file is validated one way whichever command opens it.

pub mod atomic;
pub mod bnb4bit;
pub mod dtype;
pub mod error;
pub mod gguf;
pub mod hf_config;
pub mod nf4;
pub mod one_or_many;
pub mod peft;
pub mod safetensors;

pub use dtype::DType;
pub use error::{FormatError, Result};
