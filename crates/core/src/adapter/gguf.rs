//! llama.cpp LoRA adapters (GGUF) attached to a model, as llama.cpp applies them.

use std::path::Path;

use crate::adapter::config::{AdapterConfig, TargetModules};
use crate::adapter::make_adapter;
use crate::error::{CoreError, Result};
use crate::network::model::CausalLm;

/// Attaches a llama.cpp LoRA adapter (GGUF, as `lora export` or `convert_lora_to_gguf.py` write it):
/// scale `alpha / r` per module, as llama.cpp applies it. Returns the equivalent PEFT configuration.
pub fn load_gguf_adapter(model: &mut CausalLm, path: &Path, weight: f64, trainable: bool) -> Result<AdapterConfig> {
    let g = lora_formats::gguf::GgufFile::open(path).map_err(|e| CoreError::Gguf(e.to_string()))?;
    let (heads, kv_heads) = (model.config.num_attention_heads, model.config.num_key_value_heads);
    let base_arch = lora_formats::gguf::gguf_architecture(model.config.architecture.model_type());
    let linear_heads = crate::io::gguf::qwen35::linear_heads(&model.config);
    let (alpha, modules) = crate::io::gguf::model::read_lora_adapter_for(&g, heads, kv_heads, base_arch, linear_heads)?;
    let device = model.device();
    let r = modules.first().map_or(1, |m| m.r);
    // GGUF modules are named as the text form names them (`model.layers.N`); the Hub form's layers
    // sit under `model.language_model`.
    let layers_prefix = format!("{}.layers.", model.config.text_prefix);
    let mut linears = model.linear_modules_mut();
    let mut names = Vec::new();
    for mut m in modules {
        if let Some(rest) = m.module.strip_prefix("model.layers.") {
            m.module = format!("{layers_prefix}{rest}");
        }
        let Some((_, lin)) = linears.iter_mut().find(|(p, _)| *p == m.module) else {
            return Err(CoreError::Invalid(format!(
                "{}: adapter module '{}' does not exist in the base model",
                path.display(),
                m.module
            )));
        };
        if lin.dims() != (m.d_in, m.d_out) {
            return Err(CoreError::ShapeMismatch {
                path: path.to_path_buf(),
                name: m.module.clone(),
                expected: vec![lin.dims().1, lin.dims().0],
                found: vec![m.d_out, m.d_in],
            });
        }
        let scaling = alpha as f64 / m.r as f64 * weight;
        lin.lora.push(make_adapter(m.a, m.b, m.r, m.d_in, m.d_out, scaling, 0.0, &device, trainable));
        names.push(m.module.rsplit('.').next().unwrap_or_default().to_string());
    }
    names.sort();
    names.dedup();
    Ok(AdapterConfig {
        peft_type: "LORA".into(),
        task_type: Some("CAUSAL_LM".into()),
        base_model_name_or_path: None,
        r,
        lora_alpha: alpha as f64,
        lora_dropout: 0.0,
        target_modules: Some(TargetModules::Names(names)),
        use_rslora: false,
        bias: "none".into(),
        fan_in_fan_out: false,
        init_lora_weights: true.into(),
        inference_mode: true,
        layers_to_transform: None,
        rank_pattern: Default::default(),
        alpha_pattern: Default::default(),
        modules_to_save: None,
        use_dora: false,
        trainable_token_indices: None,
        extra: Default::default(),
    })
}
