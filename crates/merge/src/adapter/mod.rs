//! PEFT LoRA adapters: the config, the weights by module, and the low-rank update they apply.

mod config;
mod delta;
mod weights;
mod writer;

pub use config::*;
pub use delta::*;
pub use weights::*;
pub use writer::*;
