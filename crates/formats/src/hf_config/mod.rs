//! A model folder's `config.json`, and the resolved configuration the model runs from: the one
//! reading every command (training, inference, merges, exports) makes of it.
//!
//! Data flows one way: [`HfConfig`] (`hf.rs`) mirrors the file's keys, typed, so that a value of the
//! wrong JSON type is an error naming its key; [`ModelConfig::resolve`] (`model_config.rs`) reads it
//! through the architecture's one declaration ([`ArchitectureSpec`] in `architecture.rs`), with the
//! rotary schedule (`rope.rs`) and each layer's token mixer (`mixers.rs`).
//!
//! Both forms seen in the wild are read: the Hub form of transformers 4 (`rope_theta`, `rope_scaling`,
//! `torch_dtype`) and the transformers 5 form (`rope_parameters {rope_theta, rope_type}`, `dtype`).
//! Keys that would change the numbers and that lora does not implement are refused by name.

mod architecture;
mod experts;
mod hf;
mod mixers;
mod model_config;
mod relayout;
mod rope;
mod tensors;

pub use architecture::{
    ARCHITECTURES, Architecture, ArchitectureSpec, AttentionBias, FeedForward, LayerPattern, SlidingWindow, Wrapper,
    architectures_table, layer_stack_prefixes, supported_classes,
};
pub use experts::MoeConfig;
pub use hf::{ConfigError, HfConfig, TokenIds};
pub use mixers::{GatedDeltaNetConfig, TokenMixer};
pub use model_config::{Bnb4Bit, ModelConfig};
pub use relayout::Relayout;
pub use rope::RopeScaling;

/// Every linear layer name any decoder layer of any architecture has (`self_attn.q_proj`, ...).
pub fn decoder_linear_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = TokenMixer::ALL.iter().flat_map(|m| m.linear_names().iter().copied()).collect();
    names.extend(FeedForward::ALL.iter().flat_map(|f| f.linear_names().iter().copied()));
    names.sort_unstable();
    names.dedup();
    names
}

/// A routed expert's module, parsed from its path (`model.layers.3.mlp.experts.17.gate_up_proj`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpertPath<'a> {
    /// The decoder layer's prefix (`model.layers.3`).
    pub layer: &'a str,
    /// The expert's index.
    pub index: usize,
    /// The projection (`gate_up_proj`, `down_proj`, or a checkpoint's `gate_proj.weight`).
    pub projection: &'a str,
}

/// The expert a module or tensor path under `mlp.experts.E.` names, if it names one.
pub fn expert_path(path: &str) -> Option<ExpertPath<'_>> {
    let (layer, rest) = path.split_once(".mlp.experts.")?;
    let (index, projection) = rest.split_once('.')?;
    Some(ExpertPath { layer, index: index.parse().ok()?, projection })
}

/// The decoder layer in a module or tensor name, wherever its stack sits (`model.layers.3.mlp.up_proj`,
/// `model.language_model.layers.3.mlp.up_proj` → 3): the first `layers.N` segment pair, as PEFT's
/// `layers_to_transform` finds it.
pub fn layer_index(name: &str) -> Option<usize> {
    let mut parts = name.split('.');
    while let Some(p) = parts.next() {
        if p == "layers" {
            return parts.next()?.parse().ok();
        }
    }
    None
}
