//! lora-train: LoRA fine-tuning on top of lora-core, driven by a TOML recipe.
//!
//! [`recipe`] reads and validates the recipe; [`data`] and [`batching`] turn files into
//! micro-batches; [`trainer`] runs the loop ([`step`]: one optimizer step) with [`optimizer`] (AdamW
//! as torch) and [`schedule`], on a worker of [`pool`]; [`evaluation`] scores validation examples and
//! `lora eval`'s data files; [`checkpoint`] saves and resumes; [`run_files`] writes metrics, the loss
//! curve, the model card and the manifest that [`verify`] checks; [`memory_plan`] predicts a run's
//! peak memory before loading; [`preference`] is DPO's loss and step.
#![warn(missing_docs)]

pub mod adapter_files;
pub mod batching;
pub mod checkpoint;
pub mod data;
pub mod distributed;
pub mod error;
pub mod evaluation;
pub mod memory_plan;
pub mod optimizer;
pub mod pool;
pub mod preference;
pub mod preview;
pub mod recipe;
pub mod run_card;
pub mod run_files;
mod run_step;
pub mod schedule;
pub mod step;
pub mod trainable;
pub mod trainer;
pub mod verify;

pub use error::{Result, TrainError};
pub use recipe::Recipe;
