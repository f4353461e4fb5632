//! bitsandbytes 4-bit checkpoints as transformers writes them (tests/fixtures/models/llama-bnb4 and
//! -dq, from scripts/make_bnb4bit_fixtures.py): read as NF4 bases, with the logits of the dequantized
//! weights, and the same codes and scales lora's own quantization gives the source folder.

use std::path::Path;

use lora_core::io::weights::Weights;
use lora_core::network::model::{CausalLm, TokenBatch};
use lora_core::{LoadOptions, ModelConfig, Quantize, default_device, to_f32_vec};
use lora_formats::safetensors::SafetensorsFile;

use crate::common::*;

fn logits(dir: &Path, opts: &LoadOptions) -> Vec<f32> {
    let golden = SafetensorsFile::open(fixtures().join("golden/llama-bnb4.safetensors")).unwrap();
    let (ids, _) = golden_i64(&golden, "input_ids");
    let model = CausalLm::load_dir_with(dir, &default_device(), opts).unwrap();
    let batch = TokenBatch::rows(vec![ids.iter().map(|&i| i as u32).collect()]);
    to_f32_vec(model.forward(&batch, None).unwrap()).unwrap()
}

#[test]
fn four_bit_checkpoints_load_with_the_logits_of_their_dequantized_weights() {
    let golden = SafetensorsFile::open(fixtures().join("golden/llama-bnb4.safetensors")).unwrap();
    for (name, double_quant) in [("llama-bnb4", false), ("llama-bnb4-dq", true)] {
        let dir = model_dir(name);
        let config = ModelConfig::from_file(dir.join("config.json")).unwrap();
        assert_eq!(config.quantization.as_ref().map(|q| q.double_quant), Some(double_quant), "{name}");
        let ours = logits(&dir, &LoadOptions::default());
        let (want, _) = golden_f32(&golden, &format!("{name}.logits"));
        let d = max_abs_diff(&ours, &want);
        assert!(d <= 1e-5, "{name}: logits max |Δ| = {d:e}");
        // The same model as lora's own NF4 of the f32 folder, to the bit: the checkpoint holds the
        // codes and scales lora's quantization computes.
        let own = logits(
            &model_dir("llama"),
            &LoadOptions { quantize: Quantize::Nf4 { double_quant }, ..LoadOptions::default() },
        );
        assert_eq!(ours, own, "{name}: logits of lora's own quantization");
        let (stored, source) = (Weights::open_dir(&dir).unwrap(), Weights::open_dir(model_dir("llama")).unwrap());
        let w = "model.layers.1.mlp.down_proj.weight";
        let read = stored.stored_nf4(w, [32, 48]).unwrap().expect("a 4-bit weight");
        let quantized = source.nf4(w, [32, 48], double_quant, lora_core::burn::tensor::DType::F32).unwrap();
        assert_eq!(read, quantized, "{name}: {w} codes and scales");
        assert!(source.stored_nf4(w, [32, 48]).unwrap().is_none(), "a dense tensor is not 4-bit");
    }
}

/// A broken 4-bit folder names the tensor at fault; an FP4 or 8-bit checkpoint is refused by name.
#[test]
fn broken_or_unsupported_four_bit_checkpoints_are_named() {
    use safetensors::SafeTensors;
    let src = model_dir("llama-bnb4-dq");
    let d = temp_dir("bnb4-broken");
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let missing = "model.layers.0.self_attn.k_proj.weight.absmax";
    let views: Vec<_> = st.tensors().into_iter().filter(|(n, _)| n != missing).collect();
    safetensors::serialize_to_file(views, None, &d.join("model.safetensors")).unwrap();
    let err = CausalLm::load_dir(&d, &default_device()).unwrap_err().to_string();
    assert!(err.contains(missing) && err.contains("missing"), "{err}");

    let cfg_path = d.join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    for (from, to, want) in [
        ("\"bnb_4bit_quant_type\": \"nf4\"", "\"bnb_4bit_quant_type\": \"fp4\"", "bnb_4bit_quant_type 'fp4'"),
        ("\"load_in_8bit\": false", "\"load_in_8bit\": true", "load_in_8bit"),
        ("\"quant_method\": \"bitsandbytes\"", "\"quant_method\": \"gptq\"", "quant_method 'gptq'"),
    ] {
        assert!(cfg.contains(from), "{from}");
        std::fs::write(&cfg_path, cfg.replace(from, to)).unwrap();
        let err = ModelConfig::from_file(&cfg_path).unwrap_err().to_string();
        assert!(err.contains(want), "{want}: {err}");
    }
}

/// Qwen3.5's Hub form in 4 bit: transformers quantizes the vision tower's linears too (carried, not
/// run) and drops mtp.*; the Gated DeltaNet and attention projections load as NF4, with the logits of
/// lora's own NF4 of the source folder.
#[test]
fn a_four_bit_qwen3_5_hub_checkpoint_loads_as_its_source_quantized() {
    let config = ModelConfig::from_file(model_dir("qwen3_5-hub-bnb4").join("config.json")).unwrap();
    assert_eq!(config.quantization.map(|q| q.double_quant), Some(true), "the Hub form's top-level quantization_config");
    let dq = LoadOptions { quantize: Quantize::Nf4 { double_quant: true }, ..LoadOptions::default() };
    let ours = logits(&model_dir("qwen3_5-hub-bnb4"), &LoadOptions::default());
    let own = logits(&model_dir("qwen3_5-hub"), &dq);
    assert_eq!(ours, own);
    let dense = logits(&model_dir("qwen3_5-hub"), &LoadOptions::default());
    assert!(max_abs_diff(&ours, &dense) > 1e-4, "the 4-bit model is not the dense one");
}

/// The random-model writer, from a config of any architecture: a 4-bit Qwen3.5 (text form) loads
/// and gives, to the bit, the logits of the same random model written dense and quantized at load.
#[test]
fn random_four_bit_qwen3_5_equals_the_dense_one_quantized() {
    use lora_core::io::random_model::write_random_model;
    let d = temp_dir("random-qwen3_5");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir("qwen3_5").join("config.json")).unwrap()).unwrap();
    config["vocab_size"] = 512.into();
    write_random_model(&d.join("q4"), config.clone(), "bf16", Some(true)).unwrap();
    write_random_model(&d.join("dense"), config, "bf16", None).unwrap();
    let q4 = ModelConfig::from_file(d.join("q4/config.json")).unwrap();
    assert_eq!(q4.quantization.map(|q| q.double_quant), Some(true));
    let dq = LoadOptions { quantize: Quantize::Nf4 { double_quant: true }, ..LoadOptions::default() };
    let a = logits(&d.join("q4"), &LoadOptions::default());
    let b = logits(&d.join("dense"), &dq);
    assert_eq!(a, b);
    assert!(a.iter().all(|v| v.is_finite()) && a.iter().any(|v| v.abs() > 1e-3));
}

/// A 4-bit MoE checkpoint as bitsandbytes stores one whose experts are linear layers (each expert's
/// gate, up and down quantized on its own, with its own nested scales), written by the random-model
/// writer: it loads (gate and up codes stacked as stored) and gives, to the bit, the logits of the
/// same random model written dense and quantized at load. Routers stay dense.
#[test]
fn random_four_bit_moe_equals_the_dense_one_quantized() {
    use lora_core::io::random_model::write_random_model;
    let d = temp_dir("random-moe");
    for model in ["qwen3_moe", "qwen3_5_moe"] {
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(model_dir(model).join("config.json")).unwrap()).unwrap();
        let (q4, dense) = (d.join(format!("{model}-q4")), d.join(format!("{model}-dense")));
        write_random_model(&q4, config.clone(), "bf16", Some(true)).unwrap();
        write_random_model(&dense, config, "bf16", None).unwrap();
        let names: Vec<String> = lora_formats::safetensors::SafetensorsFile::open(q4.join("model.safetensors"))
            .unwrap()
            .tensors()
            .keys()
            .cloned()
            .collect();
        assert!(names.iter().any(|n| n.ends_with("experts.0.gate_proj.weight.absmax")), "{model}: experts not 4-bit");
        assert!(!names.iter().any(|n| n.ends_with("mlp.gate.weight.absmax")), "{model}: a 4-bit router");
        let dq = LoadOptions { quantize: Quantize::Nf4 { double_quant: true }, ..LoadOptions::default() };
        let a = logits(&q4, &LoadOptions::default());
        let b = logits(&dense, &dq);
        assert_eq!(a, b, "{model}");
        assert!(a.iter().all(|v| v.is_finite()) && a.iter().any(|v| v.abs() > 1e-3));
    }
}
