//! GGUF, llama.cpp's and Ollama's file format: reading (header, metadata, tensors, dequantization
//! of the common quantized types) and writing. The model and tokenizer mapping lives with the model code; this
//! layer knows only the file, the two written forms of a SentencePiece vocabulary (`sentencepiece`),
//! and llama.cpp's names and value transforms of a Qwen3.5 model (`qwen35`).

mod dequant;
pub mod experts;
mod ggml_type;
mod names;
pub mod qwen35;
mod reader;
mod rotary;
pub mod sentencepiece;
mod value;
mod writer;

pub use dequant::dequantize;
pub use ggml_type::GgmlType;
pub use names::{
    gguf_architecture, gguf_module, gguf_tensor_name, hf_module, hf_tensor_name, is_gguf_file, is_linear_module,
};
pub use reader::{DEFAULT_ALIGNMENT, GgufFile, TensorInfo};
pub use rotary::rotary_rows;
pub use value::Value;
pub use writer::{HeaderPlan, TensorOut, TensorPlan, encode, encode_header, encode_values, write};
