//! PEFT LoRA adapters: the config (`lora_formats::peft`), the weights by module, and the low-rank
//! update they apply.

mod delta;
mod weights;
mod writer;

pub use delta::*;
pub use lora_formats::peft::*;
pub use weights::*;
pub use writer::*;
