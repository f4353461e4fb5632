//! `lora-merge`: streaming merges of safetensors models and PEFT LoRA adapters.
//!
//! Works on safetensors files directly (no model code): inputs are memory-mapped, every output tensor
//! is computed in f32 chunk by chunk on all cores and written to its planned offset, so memory stays
//! bounded by a few chunks per thread whatever the model size. What is here:
//!
//! - [`fold_adapters`]: `lora merge BASE ADAPTER...`, PEFT adapters folded into their base.
//! - [`merge_models`]: `lora merge --config merge.toml`, mergekit's methods (linear, task arithmetic,
//!   TIES, DARE, breadcrumbs, DELLA, SLERP, model stock) from mergekit's configuration in TOML.
//! - [`merge_adapters`] and [`extract_adapter`]: adapters combined into one, and extracted from a
//!   fine-tune by truncated SVD ([`svd`]).
//! - [`adapter`]: PEFT's on-disk adapter format, for the rest of lora to reuse.
#![warn(missing_docs)]

pub mod adapter;
pub use lora_formats::{dtype, gguf, nf4, safetensors};
mod card;
pub mod dtype_policy;
pub mod error;
mod export_gguf;
mod export_gguf_experts;
mod export_gguf_experts_lora;
mod export_gguf_model;
mod export_gguf_qwen35;
mod extract;
mod fold;
pub mod fold_experts;
mod merge;
mod merge_adapters;
pub mod methods;
pub mod model_dir;
mod output_dir;
mod quantize;
pub mod recipe;
mod rng;
pub mod source;
pub mod stream;
pub mod svd;

pub use adapter::{Adapter, AdapterConfig, LoraDelta, LoraModule};
pub use dtype::DType;
pub use error::{MergeError, Result};
pub use export_gguf::{BaseInfo, ExportReport, export_adapter_gguf, permute_rows};
pub use export_gguf_model::{ModelExportReport, export_model_gguf};
pub use extract::{ExtractReport, ExtractedModule, extract_adapter};
pub use fold::{FoldOptions, FoldPlan, FoldReport, fold_adapters, model_dtype};
pub use merge::{MergeOptions, MergeReport, merge_models, merge_with_config};
pub use merge_adapters::{AdapterMergeOptions, Combination, ModuleReport, merge_adapters};
pub use model_dir::ModelDir;
pub use output_dir::OutputDir;
pub use quantize::{QuantizeOptions, QuantizeReport, quantize_model};
pub use recipe::MergeConfig;
