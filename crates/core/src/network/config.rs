//! `config.json`: the file layer's one reading (`lora_formats::hf_config`), which merges and exports
//! make too, so a configuration refused here is refused by every command.

pub use lora_formats::hf_config::*;
