//! lora-train: LoRA fine-tuning on top of lora-core.
#![warn(missing_docs)]

pub mod optimizer;
pub mod trainable;
