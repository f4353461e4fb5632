//! The scale options of training: the staged step against PEFT (f32 and QLoRA on bitsandbytes'
//! NF4), gradient checkpointing giving the same adapter bytes, bf16 / f16 / NF4 bases training, and
//! the recipe keys' errors.

use std::path::Path;

use lora_core::adapter::load_adapter;
use lora_core::kernels::host::to_f32_vec;
use lora_core::network::model::{CausalLm, TokenBatch};
use lora_core::{BaseDtype, LoadOptions, Quantize, default_device};
use lora_formats::safetensors::SafetensorsFile;
use lora_train::optimizer::{AdamW, AdamWConfig};
use lora_train::recipe::Recipe;
use lora_train::step::{StepOptions, train_step};
use lora_train::trainable::adapter_tensors;
use lora_train::trainer::{RunOptions, prepare, run};
use serde_json::Value;

use crate::common::*;

fn replay_batch(golden: &Path) -> (TokenBatch, Vec<Vec<Option<u32>>>) {
    let g = SafetensorsFile::open(golden).unwrap();
    let i64s = |name: &str| -> (Vec<i64>, usize) {
        let t = g.info(name).unwrap().shape[1];
        (g.bytes(g.info(name).unwrap()).chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(), t)
    };
    let (ids, t) = i64s("input_ids");
    let (labels, _) = i64s("labels");
    let batch = TokenBatch::rows(ids.chunks(t).map(|r| r.iter().map(|&i| i as u32).collect()).collect());
    let labels = labels.chunks(t).map(|r| r.iter().map(|&l| (l >= 0).then_some(l as u32)).collect()).collect();
    (batch, labels)
}

/// Replays PEFT's run from its step-0 adapter through the trainer's own step; returns the
/// largest relative loss difference and the final adapter's largest difference.
fn replay(base_opts: &LoadOptions, fixture: &str, checkpointing: bool) -> (f64, f32) {
    replay_on(&default_device(), base_opts, fixture, checkpointing)
}

/// [`replay`] on `device`.
fn replay_on(
    device: &lora_core::burn::tensor::Device,
    base_opts: &LoadOptions,
    fixture: &str,
    checkpointing: bool,
) -> (f64, f32) {
    let dir = fixtures().join(fixture);
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let r = &meta["replay"];
    let expected: Vec<f64> = r["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    // The Llama replays share lora/'s batch; the others carry their own batch and base.
    let golden = if dir.join("golden.safetensors").is_file() && fixture != "lora" {
        dir.join("golden.safetensors")
    } else {
        fixtures().join("lora/golden.safetensors")
    };
    let base = match r["base_model"].as_str().or(meta["base"].as_str()) {
        Some(b) => fixtures().join(b),
        None => fixtures().join(if fixture == "qwen3_5-replay" { "models/qwen3_5" } else { "models/llama" }),
    };
    let (batch, labels) = replay_batch(&golden);
    let tokens: usize = labels.iter().map(|row| row.iter().skip(1).flatten().count()).sum();
    let mut model = CausalLm::load_dir_with(&base, device, base_opts).unwrap();
    load_adapter(&mut model, &dir.join("adapter-init"), 1.0, true).unwrap();
    let config = AdamWConfig { weight_decay: r["weight_decay"].as_f64().unwrap(), ..AdamWConfig::default() };
    let mut opt = AdamW::new(config, &adapter_tensors(&model));
    let lr = r["lr"].as_f64().unwrap();
    let batches = vec![(batch, labels)];
    // PEFT's replay does not clip.
    let options = StepOptions { max_grad_norm: 0.0, gradient_checkpointing: checkpointing };
    let mut worst = 0.0f64;
    for want in &expected {
        let got = train_step(&mut model, &mut opt, &batches, tokens, lr, options, |_| 0).unwrap().loss;
        worst = worst.max(((got - want) / want).abs());
    }
    let mut reference = CausalLm::load_dir(&base, &default_device()).unwrap();
    load_adapter(&mut reference, &dir.join("adapter-trained"), 1.0, false).unwrap();
    let mut adapter_diff = 0.0f32;
    for (o, r) in adapter_tensors(&model).into_iter().zip(adapter_tensors(&reference)) {
        adapter_diff = adapter_diff.max(max_abs(&to_f32_vec(o.inner()).unwrap(), &to_f32_vec(r).unwrap()));
    }
    (worst, adapter_diff)
}

#[test]
fn staged_step_replays_peft_with_and_without_checkpointing() {
    for checkpointing in [false, true] {
        let (loss, adapter) = replay(&LoadOptions::default(), "lora", checkpointing);
        assert!(loss <= 1e-4 && adapter <= 1e-4, "checkpointing {checkpointing}: loss {loss:e}, adapter {adapter:e}");
    }
}

/// Qwen3.5: 20 AdamW steps of PEFT with LoRA on the Gated DeltaNet projections (in_proj_qkv/z/b/a,
/// out_proj), the gated attention's q_proj and down_proj, over 90-token rows (the delta rule's
/// chunks of 64 and their boundary, forward and backward), with and without recomputation.
#[test]
fn qwen3_5_replay_matches_peft_on_gated_deltanet_projections() {
    for checkpointing in [false, true] {
        let (loss, adapter) = replay(&LoadOptions::default(), "qwen3_5-replay", checkpointing);
        assert!(loss <= 1e-4 && adapter <= 1e-4, "checkpointing {checkpointing}: loss {loss:e}, adapter {adapter:e}");
    }
}

/// Qwen3-MoE (5 experts top 3 renormalised, a dense layer; 7 experts top 1 without): 20 AdamW
/// steps of PEFT with LoRA on attention. The experts and router are frozen, but the loss reaches the
/// adapters through the routing weights too (the router's softmax of the adapted hidden states).
#[test]
fn moe_replays_match_peft_through_the_routing_weights() {
    assert_f32_replays(&["qwen3_moe-replay", "qwen3_moe-k1-replay"]);
}

/// Trainable tokens beside LoRA through the trainer's step, untied and tied: the rows' embedding
/// gradient chained from the first layer's input (with and without recomputation) and, tied, the
/// head's, as PEFT's.
#[test]
fn trainable_tokens_step_replays_peft() {
    assert_f32_replays(&["lora/tokens-llama", "lora/tokens-llama-tied", "lora/tokens-llama-head"]);
}

/// New special tokens (scripts/make_added_tokens_fixtures.py): PEFT's adapter for a tokenizer grown
/// by two tokens loads on the original base, which grows to the adapter's tokenizer as transformers'
/// `resize_token_embeddings` does, and 10 steps on text with the new tokens replay PEFT's, tied and
/// untied (the head's new rows trained too).
#[test]
fn added_tokens_grow_the_base_and_replay_peft() {
    assert_f32_replays(&["lora/added-llama-tied", "lora/added-llama"]);
}

/// Each f32 replay within 1e-4 (loss, relative; adapter), with and without recomputation.
fn assert_f32_replays(fixtures: &[&str]) {
    for fixture in fixtures {
        for checkpointing in [false, true] {
            let (loss, adapter) = replay(&LoadOptions::default(), fixture, checkpointing);
            assert!(
                loss <= 1e-4 && adapter <= 1e-4,
                "{fixture}, checkpointing {checkpointing}: loss {loss:e}, adapter {adapter:e}"
            );
        }
    }
}

/// LoRA on the routed experts as PEFT (0.21) writes it for transformers 5's fused experts
/// (`target_parameters` gate_up_proj at rank 2r and down_proj, flattened over every expert), with
/// q/v_proj: PEFT's step-0 file loaded, 20 AdamW steps, the trained file's values; Qwen3-MoE (a
/// dense layer among sparse ones), Mixtral (named by its w1/w3/w2) and Qwen3.5-MoE (Gated DeltaNet
/// layers, a shared expert whose gate/up/down_proj the names reach too; the experts named as PEFT's
/// target_parameters with lora's rank and alpha patterns).
#[test]
fn expert_lora_replays_match_peft() {
    assert_f32_replays(&["qwen3_moe-experts-replay", "mixtral-experts-replay", "qwen3_5_moe-experts-replay"]);
}

/// QLoRA: PEFT on transformers + bitsandbytes NF4 (compute f32), from a shared step-0 adapter.
#[test]
fn qlora_replay_matches_peft_on_bitsandbytes_nf4() {
    let opts = LoadOptions { dtype: BaseDtype::F32, quantize: Quantize::Nf4 { double_quant: false } };
    for checkpointing in [false, true] {
        let (loss, adapter) = replay(&opts, "qlora", checkpointing);
        assert!(loss <= 1e-4 && adapter <= 1e-4, "checkpointing {checkpointing}: loss {loss:e}, adapter {adapter:e}");
    }
}

/// The staged step on a GPU (`LORA_TEST_GPU`): chunked loss, recomputation, the tiled attention's
/// backward and the NF4 codes dequantized on the GPU, against PEFT's f32 and QLoRA replays with the
/// CPU's tolerances (every value is f32 there too).
#[test]
fn gpu_staged_step_replays_peft_f32_and_qlora() {
    let Some(device) = gpu_device() else { return };
    let qlora = LoadOptions { dtype: BaseDtype::F32, quantize: Quantize::Nf4 { double_quant: false } };
    for (opts, fixture) in [
        (LoadOptions::default(), "lora"),
        (qlora, "qlora"),
        (LoadOptions::default(), "qwen3_5-replay"),
        (LoadOptions::default(), "qwen3_moe-experts-replay"),
    ] {
        let (loss, adapter) = replay_on(&device, &opts, fixture, true);
        assert!(loss <= 1e-4 && adapter <= 1e-4, "{fixture} on the GPU: loss {loss:e}, adapter {adapter:e}");
    }
}

fn tiny(out: &Path, extra: &[&str]) -> Recipe {
    let mut set = vec![format!("output.dir=\"{}\"", out.display())];
    set.extend(extra.iter().map(|s| s.to_string()));
    let path = repo().join("recipes/tiny.toml");
    Recipe::load(&path, &set).unwrap()
}

fn adapter_bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("adapter_model.safetensors")).unwrap()
}

/// Recomputation changes no bit of the adapter, on every kind of base; with dropout, on every
/// linear layer, and with the head adapted too.
#[test]
fn gradient_checkpointing_gives_identical_adapter_bytes() {
    let d = temp_dir("checkpointing");
    let common = ["lora.dropout=0.1", "lora.targets=[\"q_proj\",\"v_proj\",\"down_proj\",\"lm_head\"]"];
    for (tag, base) in [
        ("f32", vec![]),
        ("bf16", vec!["model.dtype=\"bf16\""]),
        ("nf4", vec!["model.quantize=\"nf4\"", "model.double_quant=true"]),
    ] {
        let mut sets: Vec<&str> = common.to_vec();
        sets.extend(base.iter().copied());
        let plain = tiny(&d.join(format!("{tag}-plain")), &sets);
        sets.push("train.gradient_checkpointing=true");
        let recomputed = tiny(&d.join(format!("{tag}-recompute")), &sets);
        let a = run(prepare(&plain).unwrap(), &RunOptions::default(), &mut |_| {}).unwrap();
        let b = run(prepare(&recomputed).unwrap(), &RunOptions::default(), &mut |_| {}).unwrap();
        assert!(a.last_loss < a.first_loss, "{tag}: loss {} -> {}", a.first_loss, a.last_loss);
        assert!(adapter_bytes(&a.dir) == adapter_bytes(&b.dir), "{tag}: adapters differ with recomputation");
        let manifest: Value =
            serde_json::from_str(&std::fs::read_to_string(a.dir.join("manifest.json")).unwrap()).unwrap();
        let (dtype, quant) = match tag {
            "bf16" => ("bf16", "none"),
            "nf4" => ("f32", "nf4-dq"),
            _ => ("f32", "none"),
        };
        assert_eq!(
            (manifest["base_dtype"].as_str(), manifest["base_quantization"].as_str()),
            (Some(dtype), Some(quant))
        );
    }
    // The bases differ, so their adapters do.
    assert!(adapter_bytes(&d.join("f32-plain")) != adapter_bytes(&d.join("nf4-plain")));
    let card = std::fs::read_to_string(d.join("nf4-plain/README.md")).unwrap();
    assert!(card.contains("QLoRA") && card.contains("--quantized-base nf4"), "{card}");
}

#[test]
fn scale_keys_are_validated_by_name() {
    let d = temp_dir("scale-keys");
    let path = repo().join("recipes/tiny.toml");
    let out = format!("output.dir=\"{}\"", d.join("x").display());
    for (set, want) in [
        ("model.quantize=\"int4\"", "model.quantize must be \"none\" or \"nf4\", got \"int4\"; did you mean \"nf4\"?"),
        ("model.dtype=\"f8\"", "model.dtype must be \"auto\", \"f32\", \"bf16\" or \"f16\", got \"f8\""),
        ("model.double_quant=true", "model.double_quant needs quantize = \"nf4\""),
        ("train.gradient_checkpointing=\"yes\"", "gradient_checkpointing"),
    ] {
        let err = Recipe::load(&path, &[out.clone(), set.to_string()]).unwrap_err().to_string();
        assert!(err.contains(want), "{set}: {err}");
    }
    let text = std::fs::read_to_string(&path).unwrap().replace("[model]\n", "[model]\nload_in_4bit = true\n");
    let file = d.join("r.toml");
    std::fs::write(&file, text).unwrap();
    let err = Recipe::load(&file, &[out]).unwrap_err().to_string();
    assert!(err.contains("unknown key 'load_in_4bit' in [model]; did you mean 'quantize'?"), "{err}");
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The dry-run's memory plan, from config.json alone, predicts the bytes the loaded base holds.
#[test]
fn memory_plan_predicts_the_loaded_base_bytes() {
    memory_plan_predicts_the_loaded_base_bytes_on(&default_device(), "cpu");
}

/// The same on a GPU, where an NF4 base's codes and f32 scales are held on the device.
#[test]
fn gpu_memory_plan_predicts_the_loaded_base_bytes() {
    let Some(device) = gpu_device() else { return };
    let name = std::env::var("LORA_TEST_GPU").unwrap();
    memory_plan_predicts_the_loaded_base_bytes_on(&device, &name);
}

fn memory_plan_predicts_the_loaded_base_bytes_on(device: &lora_core::burn::tensor::Device, name: &str) {
    let d = temp_dir("plan");
    // The 4-bit checkpoints hold their linear layers as stored, whatever the options say.
    for model in ["llama", "llama-tied", "qwen3", "llama-bnb4", "llama-bnb4-dq", "qwen3_moe", "mixtral"] {
        let base = fixtures().join("models").join(model);
        let config = lora_core::ModelConfig::from_file(base.join("config.json")).unwrap();
        for opts in [
            LoadOptions::default(),
            LoadOptions { dtype: BaseDtype::Bf16, quantize: Quantize::None },
            LoadOptions { dtype: BaseDtype::F32, quantize: Quantize::Nf4 { double_quant: false } },
            LoadOptions { dtype: BaseDtype::Bf16, quantize: Quantize::Nf4 { double_quant: true } },
            LoadOptions { dtype: BaseDtype::F32, quantize: Quantize::Nf4 { double_quant: true } },
        ] {
            if !device.supports_dtype(opts.dtype.dtype()) {
                continue; // bf16 on wgpu: refused by name (gpu.rs)
            }
            let device_key = format!("train.device=\"{name}\"");
            let recipe = tiny(&d.join("x"), &[&format!("model.base=\"{}\"", base.display()), &device_key]);
            let plan = lora_train::memory_plan::plan(&recipe, &config, &opts).unwrap();
            let loaded = CausalLm::load_dir_with(&base, device, &opts).unwrap();
            assert_eq!(plan.base, loaded.base_bytes() as u64, "{model} {opts:?}");
            assert!(plan.adapter > 0 && plan.activations > 0 && plan.head_chunk > 0);
        }
    }
}
