//! lora-core: the Llama family (Llama 2/3.x, Mistral, Qwen2/2.5, Qwen3) and Qwen3.5 on burn, loading Hugging Face
//! model folders and giving the numbers transformers gives.
//!
//! Layout: one concept per file. [`config`] reads `config.json`; [`weights`] reads the weights by memory
//! map through `lora_formats`' safetensors and GGUF readers; [`model`] holds the network, built from [`decoder_layer`],
//! [`attention`], [`mlp`], [`norm`], [`linear`] and [`rope`]; [`kv_cache`] and [`generate`] do
//! incremental decoding; [`tokenizer`] wraps `tokenizer.json`; [`backend`] picks the device.
#![warn(missing_docs)]

pub mod adapter;
pub mod attention;
pub mod backend;
pub mod base_weight;
pub mod chunked_loss;
pub mod config;
pub mod cpu_kernel;
pub mod decoder_layer;
pub mod delta_rule;
pub mod error;
pub mod eval;
pub mod frozen_matmul;
mod frozen_matmul_cpu;
pub mod fused_attention;
pub mod fused_cross_entropy;
pub mod fused_delta_rule;
pub mod fused_lora_linear;
pub mod fused_rms_norm;
pub mod fused_rope;
pub mod fused_swiglu;
pub mod gated_delta_net;
pub mod generate;
pub mod gguf_model;
pub mod gguf_to_folder;
pub mod gguf_tokenizer;
pub mod host;
pub mod kv_cache;
pub mod large_blocks;
pub mod linear;
pub mod load_options;
pub mod lora;
pub mod loss;
pub mod mlp;
pub mod model;
pub mod nf4_device;
pub mod norm;
pub mod peft_config;
pub mod random_model;
pub mod rope;
pub mod safetensors_write;
pub mod tiled_attention;
pub mod tokenizer;
pub mod weights;

pub use backend::{Backend, default_device};
pub use config::{Architecture, ModelConfig};
pub use error::{CoreError, Result};
pub use generate::{GenerateOptions, SamplingParams, generate};
pub use load_options::{BaseDtype, LoadOptions, Quantize};
pub use model::{CausalLm, LayerInputs, TokenBatch};
pub use tokenizer::Tokenizer;

/// Re-exported so that dependants use the same burn.
pub use burn;
