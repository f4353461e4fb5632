//! GGUF models (llama.cpp, Ollama) as lora reads them: the configuration and tensors of a [`model`]
//! file mapped to Hugging Face's names and layout (a Qwen3.5 file's through [`qwen35`]), its [`tokenizer`], and [`to_folder`], which writes
//! a GGUF model out as a Hugging Face folder. The file itself is read by `lora_formats::gguf`.

pub mod model;
pub mod qwen35;
pub mod to_folder;
pub mod tokenizer;
