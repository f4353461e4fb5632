//! lora-core: the Llama family (Llama 2/3.x, Mistral, Qwen2/2.5, Qwen3) and Qwen3.5 on burn, loading
//! Hugging Face model folders and GGUF files and giving the numbers transformers gives.
//!
//! Laid out by concept, in the order data flows:
//! - [`io`]: reading a model (safetensors, sharded; GGUF models and tokenizers), the tokenizer, load
//!   options, atomic safetensors writes and the random-model writer.
//! - [`network`]: the resolved configuration, the model, the decoder layer and its blocks (attention,
//!   Gated DeltaNet, MLP, norms, rotary embeddings), the linear layer with its frozen weight and LoRA.
//! - [`kernels`]: the backend choice and the fused or hand-written kernels the blocks call, each
//!   beside or naming the plain reference it is tested against.
//! - [`quant`]: NF4 on the device (the host side is bitsandbytes' format, `lora_formats::nf4`).
//! - [`loss`]: next-token cross-entropy (plain, chunked, fused) and evaluation on texts.
//! - [`adapter`]: PEFT adapters: target selection, initialisation, `adapter_config.json` and weights.
//! - [`generation`]: the per-layer caches and the decoding loop.
#![warn(missing_docs)]

pub mod adapter;
pub mod error;
pub mod generation;
pub mod io;
pub mod kernels;
pub mod loss;
pub mod network;
pub mod quant;

pub use error::{CoreError, Result};
pub use generation::generate::{GenerateOptions, SamplingParams, generate};
pub use io::load_options::{BaseDtype, LoadOptions, Quantize};
pub use io::tokenizer::Tokenizer;
pub use kernels::backend::{Backend, default_device};
pub use kernels::host::to_f32_vec;
pub use network::config::{Architecture, ModelConfig};
pub use network::model::{CausalLm, LayerInputs, TokenBatch};

/// Re-exported so that dependants use the same burn.
pub use burn;
