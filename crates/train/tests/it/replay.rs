//! PEFT parity: adapter logits, merged == unmerged, and a 20-step AdamW replay of PEFT + PyTorch.

use lora_core::adapter::{load_adapter, merge_into_base};
use lora_core::burn::tensor::Device;
use lora_core::default_device;
use lora_core::kernels::host::to_f32_vec;
use lora_core::loss::shifted_cross_entropy_sum;
use lora_core::network::model::{CausalLm, TokenBatch};
use lora_formats::safetensors::SafetensorsFile;
use lora_train::optimizer::{AdamW, AdamWConfig};
use lora_train::trainable::{adapter_tensors, set_adapter_tensors};
use serde_json::Value;

use crate::common::*;

pub(crate) fn golden() -> SafetensorsFile {
    SafetensorsFile::open(fixtures().join("lora/golden.safetensors")).unwrap()
}

pub(crate) fn batch(g: &SafetensorsFile) -> TokenBatch {
    let info = g.info("input_ids").unwrap().clone();
    let bytes = g.bytes(g.info("input_ids").unwrap());
    let ids: Vec<u32> = bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect();
    let t = info.shape[1];
    TokenBatch::rows(ids.chunks(t).map(<[u32]>::to_vec).collect())
}

pub(crate) fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn base() -> CausalLm {
    base_on(&default_device())
}

pub(crate) fn base_on(device: &Device) -> CausalLm {
    CausalLm::load_dir(fixtures().join("models/llama"), device).unwrap()
}

/// The replay batch's labels (−100: none).
pub(crate) fn labels(g: &SafetensorsFile) -> Vec<Vec<Option<u32>>> {
    let raw = g.bytes(g.info("labels").unwrap());
    let flat: Vec<i64> = raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
    let t = g.info("labels").unwrap().shape[1];
    flat.chunks(t).map(|r| r.iter().map(|&l| (l >= 0).then_some(l as u32)).collect()).collect()
}

#[test]
fn peft_adapters_give_peft_logits() {
    let g = golden();
    let b = batch(&g);
    for name in ["adapter-qv", "adapter-rslora"] {
        let mut model = base();
        load_adapter(&mut model, &fixtures().join("lora").join(name), 1.0, false).unwrap();
        let ours = to_f32_vec(model.forward(&b, None).unwrap()).unwrap();
        let (reference, _) = g.to_f32(&format!("logits.{name}")).unwrap();
        let d = max_abs(&ours, &reference);
        assert!(d <= 1e-4, "{name}: max |Δ| {d:e}");
        // The adapter really changes the output.
        let plain = to_f32_vec(base().forward(&b, None).unwrap()).unwrap();
        assert!(max_abs(&plain, &reference) > 1e-2, "{name}: adapter has no effect");
    }
}

#[test]
fn merged_equals_unmerged() {
    let g = golden();
    let b = batch(&g);
    let mut model = base();
    load_adapter(&mut model, &fixtures().join("lora/adapter-qv"), 1.0, false).unwrap();
    let unmerged = to_f32_vec(model.forward(&b, None).unwrap()).unwrap();
    merge_into_base(&mut model);
    assert!(model.linear_modules().iter().all(|(_, l)| l.lora.is_empty()));
    let merged = to_f32_vec(model.forward(&b, None).unwrap()).unwrap();
    assert!(max_abs(&unmerged, &merged) <= 1e-4);
    let (peft_merged, _) = g.to_f32("logits.adapter-qv.merged").unwrap();
    assert!(max_abs(&merged, &peft_merged) <= 1e-4);
}

#[test]
fn adamw_replay_matches_peft() {
    adamw_replay_on(&default_device());
}

/// The replay on a GPU (`LORA_TEST_GPU=wgpu|cuda`), against the same PEFT goldens and tolerances:
/// every value is f32 there too, and only the order of sums differs.
#[test]
fn gpu_adamw_replay_matches_peft() {
    let Some(device) = gpu_device() else { return };
    adamw_replay_on(&device);
}

/// LoRA+ (`[train] loraplus_lr_ratio`): every B at 16 times A's rate replays PEFT's
/// `create_loraplus_optimizer` (scripts/make_loraplus_fixtures.py) step for step.
#[test]
fn loraplus_replay_matches_peft() {
    replay_on(&default_device(), "lora/loraplus", Some(16.0));
}

/// DoRA (`use_dora`): 20 steps from a PEFT DoRA adapter (scripts/make_dora_train_fixtures.py) replay
/// PEFT's, the magnitudes trained beside the factors and saved under PEFT's keys.
#[test]
fn dora_replay_matches_peft() {
    let model = replay_on(&default_device(), "lora/dora-train", None);
    let dir = std::env::temp_dir().join(format!("lora-dora-replay-{}", std::process::id()));
    let cfg = lora_core::adapter::config::AdapterConfig::load(
        &fixtures().join("lora/dora-train/adapter-trained/adapter_config.json"),
    )
    .unwrap();
    lora_core::adapter::save_adapter(&model, &dir, &cfg, lora_core::io::safetensors_write::StoredDtype::F32).unwrap();
    let ours = SafetensorsFile::open(dir.join("adapter_model.safetensors")).unwrap();
    let theirs =
        SafetensorsFile::open(fixtures().join("lora/dora-train/adapter-trained/adapter_model.safetensors")).unwrap();
    let shapes = |f: &SafetensorsFile| -> Vec<(String, Vec<usize>)> {
        let mut v: Vec<_> = f.tensors().iter().map(|(k, i)| (k.clone(), i.shape.clone())).collect();
        v.sort();
        v
    };
    assert_eq!(shapes(&ours), shapes(&theirs));
    for (name, _) in shapes(&theirs) {
        let d = max_abs(&ours.to_f32(&name).unwrap().0, &theirs.to_f32(&name).unwrap().0);
        assert!(d <= 1e-4, "{name}: max |Δ| {d:e}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// DoRA and trainable tokens on a GPU (`LORA_TEST_GPU=wgpu|cuda`): the same
/// PEFT replays and tolerances, every value f32 there too.
#[test]
fn gpu_dora_and_tokens_replay_peft() {
    let Some(device) = gpu_device() else { return };
    replay_on(&device, "lora/dora-train", None);
    replay_on(&device, "lora/tokens-llama-tied", None);
}

/// Trainable tokens (`trainable_token_indices`) beside LoRA, on an untied and a tied model, and on the
/// untied model's head too (scripts/make_trainable_tokens_fixtures.py): the rows learn from the
/// embedding and, tied, from the head's columns, as PEFT's.
#[test]
fn trainable_tokens_replay_matches_peft() {
    for fixture in ["lora/tokens-llama", "lora/tokens-llama-tied", "lora/tokens-llama-head"] {
        let model = replay_on(&default_device(), fixture, None);
        assert!(model.model.embed_tokens.tokens.is_some(), "{fixture}");
        assert_eq!(model.head_tokens.is_some(), fixture.ends_with("head"), "{fixture}");
    }
}

/// 20 AdamW steps of the full forward and backward from PEFT's initial adapter: every loss within
/// 1e-4 relative of PEFT's, the final adapter within 1e-4, the base untouched.
fn adamw_replay_on(device: &Device) {
    replay_on(device, "lora", None);
}

/// The replay against the goldens under `fixture` (its `golden.json` losses, its `adapter-trained`)
/// from its `adapter-init` (else `lora/adapter-init`), every B's rate `loraplus` times A's when set;
/// returns the trained model.
fn replay_on(device: &Device, fixture: &str, loraplus: Option<f64>) -> CausalLm {
    let g = golden();
    let b = batch(&g);
    let labels = labels(&g);
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join(fixture).join("golden.json")).unwrap()).unwrap();
    let expected: Vec<f64> = meta["replay"]["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();

    // The fixture's base (golden.json "base"), else the tiny Llama.
    let base_dir = fixtures().join(meta["base"].as_str().unwrap_or("models/llama"));
    let load_base = || CausalLm::load_dir(&base_dir, device).unwrap();
    let mut model = load_base();
    let init = fixtures().join(fixture).join("adapter-init");
    let init = if init.is_dir() { init } else { fixtures().join("lora/adapter-init") };
    load_adapter(&mut model, &init, 1.0, true).unwrap();
    let base_before =
        to_f32_vec(model.model.layers[0].self_attn.as_ref().unwrap().q_proj.weight.to_f32(device)).unwrap();
    let mut opt = AdamW::new(AdamWConfig::default(), &adapter_tensors(&model));
    if let Some(ratio) = loraplus {
        opt.lr_scales = lora_train::trainable::loraplus_scales(&model, ratio);
    }
    for (step, want) in expected.iter().enumerate() {
        let logits = model.forward(&b, None).unwrap();
        let (sum, count) = shifted_cross_entropy_sum(logits, &labels);
        let loss = sum / count as f64;
        let got = to_f32_vec(loss.clone().inner()).unwrap()[0] as f64;
        assert!(((got - want) / want).abs() <= 1e-4, "step {step}: loss {got} vs PEFT {want}");
        let grads = loss.backward();
        let params = adapter_tensors(&model);
        let gs = params.iter().map(|p| p.grad(&grads).unwrap_or_else(|| p.zeros_like().inner())).collect();
        let new = opt.update(params, gs, 1e-3);
        set_adapter_tensors(&mut model, new);
    }
    // The final adapter equals PEFT's.
    let trained_dir = fixtures().join(fixture).join("adapter-trained");
    let trained = SafetensorsFile::open(trained_dir.join("adapter_model.safetensors")).unwrap();
    let mut reference = load_base();
    load_adapter(&mut reference, &trained_dir, 1.0, false).unwrap();
    let ours = adapter_tensors(&model);
    let theirs = adapter_tensors(&reference);
    assert_eq!(ours.len(), trained.tensors().len());
    for (o, r) in ours.into_iter().zip(theirs) {
        let d = max_abs(&to_f32_vec(o.inner()).unwrap(), &to_f32_vec(r).unwrap());
        assert!(d <= 1e-4, "final adapter max |Δ| {d:e}");
    }
    // The base is untouched, bit for bit.
    assert_eq!(
        to_f32_vec(model.model.layers[0].self_attn.as_ref().unwrap().q_proj.weight.to_f32(device)).unwrap(),
        base_before
    );
    model
}
