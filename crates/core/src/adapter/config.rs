//! `adapter_config.json` as PEFT writes and reads it: the file layer's one reading
//! (`lora_formats::peft`), shared with merges and exports. A model loading an adapter calls
//! [`AdapterConfig::load`] and then [`AdapterConfig::check_loadable`], which also refuses what only a
//! merge can apply (trained biases, Conv1D layout, `modules_to_save`).

pub use lora_formats::peft::{AdapterConfig, LayerIndices, TargetModules, TokenIndices};
