//! Which element type each output tensor of a fold or merge gets.
//!
//! A fold changes the weights its adapters touch and nothing else, so by default every tensor keeps
//! its stored dtype: an untouched one is copied byte for byte, a changed one is written in its own
//! dtype (a bf16 checkpoint with f32 `A_log`, as Qwen ships Qwen3.5, stays so). An explicit dtype
//! (`--dtype`, mergekit's `out_dtype`) converts the float tensors, except those the architecture keeps
//! in f32 when stored so ([`ArchitectureSpec::f32_tensors`]), which are listed in the report.

use lora_formats::hf_config::{ArchitectureSpec, HfConfig, ModelConfig};
use serde_json::Value;

use crate::dtype::DType;

/// The output dtype rule of one fold or merge.
#[derive(Debug, Clone, Copy)]
pub struct DtypePolicy {
    target: Option<DType>,
    keep_f32: &'static [&'static str],
}

impl DtypePolicy {
    /// Each tensor in its stored dtype (`target` None), or the float tensors in `target` except
    /// the architecture's f32 tensors (`spec`, when the model's architecture is known).
    pub fn new(target: Option<DType>, spec: Option<&ArchitectureSpec>) -> Self {
        Self { target, keep_f32: spec.map_or(&[], |s| s.f32_tensors) }
    }

    /// The dtype of output tensor `name`, stored in the input as `stored`.
    pub fn dtype_of(&self, name: &str, stored: DType) -> DType {
        match self.target {
            _ if !stored.is_float() => stored,
            None => stored,
            Some(_) if stored == DType::F32 && self.keeps_f32(name) => DType::F32,
            Some(t) => t,
        }
    }

    /// Whether the conversion leaves `name` (stored in f32) in f32, and why.
    fn keeps_f32(&self, name: &str) -> bool {
        self.keep_f32.iter().any(|suffix| name.ends_with(suffix))
    }

    /// The tensors a conversion left in f32 (`stored` gives each tensor's input dtype): empty
    /// without an explicit dtype, or when it is f32.
    pub fn kept_in_f32<'a>(&self, tensors: impl IntoIterator<Item = (&'a str, DType)>) -> Vec<String> {
        match self.target {
            Some(t) if t != DType::F32 => tensors
                .into_iter()
                .filter(|(n, d)| *d == DType::F32 && self.keeps_f32(n))
                .map(|(n, _)| n.to_string())
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// The dtype most of the values of `tensors` have (what config.json's `dtype` says of a model).
pub fn dominant_dtype(tensors: impl IntoIterator<Item = (DType, usize)>) -> DType {
    // Keyed by name, so that a tie goes the same way whatever the tensors' order.
    let mut counts: std::collections::BTreeMap<&str, (usize, DType)> = std::collections::BTreeMap::new();
    for (d, n) in tensors.into_iter().filter(|(d, _)| d.is_float()) {
        counts.entry(d.safetensors_name()).or_insert((0, d)).0 += n;
    }
    counts.values().max_by_key(|(n, _)| *n).map_or(DType::F32, |(_, d)| *d)
}

/// The declaration of the architecture a parsed `config.json` names, when lora knows it.
pub fn spec_of(config: Option<&Value>) -> Option<&'static ArchitectureSpec> {
    let hf = HfConfig::from_value(config?.clone()).ok()?;
    Some(ModelConfig::resolve(&hf).ok()?.architecture.spec())
}
