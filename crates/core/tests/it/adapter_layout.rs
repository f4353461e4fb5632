//! Adapters across Qwen3.5's two checkpoint forms: the text form (`model.layers.N`) and the Hub form
//! (`model.language_model.layers.N`). An adapter made on either applies to both, its module names
//! mapped, with the logits of the same adapter renamed by hand.

use std::path::Path;

use lora_core::adapter::{load_adapter, load_adapter_mapped};
use lora_core::network::model::{CausalLm, TokenBatch};
use lora_core::{default_device, to_f32_vec};
use safetensors::SafeTensors;

use crate::common::*;

/// `src`'s safetensors file written to `dst` with every tensor name passed through `rename`, and
/// every name `drop` accepts left out.
fn renamed(src: &Path, dst: &Path, rename: impl Fn(&str) -> String, drop: impl Fn(&str) -> bool) {
    let bytes = std::fs::read(src).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let views: Vec<(String, _)> =
        st.tensors().into_iter().filter(|(n, _)| !drop(n)).map(|(n, v)| (rename(&n), v)).collect();
    safetensors::serialize_to_file(views, None, dst).unwrap();
}

/// The Hub-form fixture rewritten as its text form: tensors under `model.`, the vision tower left out
/// (mtp kept), config.json flattened from `text_config`.
fn text_form_of_hub(dir: &Path) {
    let hub = model_dir("qwen3_5-hub");
    std::fs::create_dir_all(dir).unwrap();
    renamed(
        &hub.join("model.safetensors"),
        &dir.join("model.safetensors"),
        |n| n.replace("model.language_model.", "model."),
        |n| n.starts_with("model.visual."),
    );
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(hub.join("config.json")).unwrap()).unwrap();
    let mut text = cfg["text_config"].clone();
    text["architectures"] = serde_json::json!(["Qwen3_5ForCausalLM"]);
    text["tie_word_embeddings"] = cfg["tie_word_embeddings"].clone();
    std::fs::write(dir.join("config.json"), text.to_string()).unwrap();
}

/// An adapter folder with its module names rewritten.
fn adapter_renamed(dir: &Path, from: &str, to: &str) {
    let src = fixtures().join("golden/qwen3_5-hub-adapter");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(src.join("adapter_config.json"), dir.join("adapter_config.json")).unwrap();
    renamed(
        &src.join("adapter_model.safetensors"),
        &dir.join("adapter_model.safetensors"),
        |n| n.replace(from, to),
        |_| false,
    );
}

fn logits(model: &CausalLm) -> Vec<f32> {
    let batch = TokenBatch::rows(vec![vec![0, 17, 250, 33, 90, 12, 7, 301, 44]]);
    to_f32_vec(model.forward(&batch, None).unwrap()).unwrap()
}

#[test]
fn an_adapter_of_either_qwen3_5_form_applies_to_the_other_as_if_renamed_by_hand() {
    let device = default_device();
    let tmp = temp_dir("adapter-layout");
    let hub_adapter = fixtures().join("golden/qwen3_5-hub-adapter");
    let text_adapter = tmp.join("text-adapter");
    adapter_renamed(&text_adapter, "model.language_model.layers.", "model.layers.");
    let text_model = tmp.join("text-model");
    text_form_of_hub(&text_model);

    // The Hub form with its own adapter, as named: the reference.
    let mut hub = CausalLm::load_dir(model_dir("qwen3_5-hub"), &device).unwrap();
    let plain = logits(&hub);
    let (_, mapped) = load_adapter_mapped(&mut hub, &hub_adapter, 1.0, false).unwrap();
    assert!(mapped.is_none(), "names that exist are not mapped");
    let reference = logits(&hub);
    assert!(max_abs_diff(&plain, &reference) > 0.1, "the adapter changes the logits");

    // The Hub form with the text-form adapter: mapped, the same logits.
    let mut hub = CausalLm::load_dir(model_dir("qwen3_5-hub"), &device).unwrap();
    let (_, mapped) = load_adapter_mapped(&mut hub, &text_adapter, 1.0, false).unwrap();
    let note = mapped.expect("mapped").describe();
    assert!(note.contains("text form") && note.contains("Hub form"), "{note}");
    assert_eq!(logits(&hub), reference);

    // The text form (same weights) with the Hub-form adapter, and with its own.
    for adapter in [&hub_adapter, &text_adapter] {
        let mut text = CausalLm::load_dir(&text_model, &device).unwrap();
        load_adapter(&mut text, adapter, 1.0, false).unwrap();
        let d = max_abs_diff(&logits(&text), &reference);
        assert!(d <= 1e-6, "{}: max |Δ| = {d:e}", adapter.display());
    }

    // A module of neither form is still refused, by name.
    let other = tmp.join("other-adapter");
    adapter_renamed(&other, "model.language_model.layers.0.linear_attn.in_proj_qkv", "model.layers.0.mlp.nonexistent");
    let mut hub = CausalLm::load_dir(model_dir("qwen3_5-hub"), &device).unwrap();
    let err = load_adapter(&mut hub, &other, 1.0, false).unwrap_err().to_string();
    assert!(err.contains("does not exist in the base model"), "{err}");
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// A PEFT DoRA adapter (`scripts/make_dora_fixtures.py`) applies as PEFT runs it, g ⊙ (W·x + s·B·A·x)
/// with g = m / ‖W + s·B·A‖ per output row: the logits equal those of PEFT's merged model, loaded for
/// inference (g fixed) or for training (g computed every pass). A weight other than 1 is refused by name.
#[test]
fn dora_adapters_apply_as_peft_runs_them() {
    use lora_core::network::model::TokenBatch;
    let device = lora_core::default_device();
    let dir = fixtures().join("lora/dora");
    let mut m = lora_core::CausalLm::load_dir(fixtures().join("models/llama"), &device).unwrap();
    let base =
        lora_core::to_f32_vec(m.forward(&TokenBatch::rows(vec![vec![0, 5, 17, 42, 99, 200, 383, 7]]), None).unwrap())
            .unwrap();
    lora_core::adapter::load_adapter(&mut m, &dir.join("adapter"), 1.0, false).unwrap();
    let ours =
        lora_core::to_f32_vec(m.forward(&TokenBatch::rows(vec![vec![0, 5, 17, 42, 99, 200, 383, 7]]), None).unwrap())
            .unwrap();
    let st = lora_formats::safetensors::SafetensorsFile::open(dir.join("merged.safetensors")).unwrap();
    let (peft, _) = st.to_f32("logits").unwrap();
    let scale = peft.iter().fold(1f32, |a, v| a.max(v.abs()));
    let d = ours.iter().zip(&peft).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(d <= 1e-5 * scale, "max |Δ| {d:e} against PEFT's merged logits (scale {scale})");
    assert!(base.iter().zip(&peft).any(|(a, b)| (a - b).abs() > 1e-2), "the adapter changes the logits");
    let mut m = lora_core::CausalLm::load_dir(fixtures().join("models/llama"), &device).unwrap();
    lora_core::adapter::load_adapter(&mut m, &dir.join("adapter"), 1.0, true).unwrap();
    let trainable =
        lora_core::to_f32_vec(m.forward(&TokenBatch::rows(vec![vec![0, 5, 17, 42, 99, 200, 383, 7]]), None).unwrap())
            .unwrap();
    let d = ours.iter().zip(&trainable).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(d <= 1e-6 * scale, "trainable against inference: {d:e}");
    let mut m = lora_core::CausalLm::load_dir(fixtures().join("models/llama"), &device).unwrap();
    let e = lora_core::adapter::load_adapter(&mut m, &dir.join("adapter"), 0.5, false).unwrap_err();
    assert!(e.to_string().contains("weight 1 only"), "{e}");
}
