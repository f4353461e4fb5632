//! Loading: half-precision weights, and every kind of bad input as a clear error.

use std::path::Path;

use lora_core::io::weights::Weights;
use lora_core::network::model::CausalLm;
use lora_core::{ModelConfig, default_device};
use lora_formats::safetensors::SafetensorsFile;

use crate::common::*;

/// bf16 and f16 checkpoints written by transformers load to exactly the f32 values transformers
/// upcasts them to.
#[test]
fn half_precision_weights_load_exactly() {
    for label in ["bf16", "f16"] {
        let w = Weights::open_dir(model_dir(&format!("llama-{label}"))).unwrap();
        let upcast =
            SafetensorsFile::open(fixtures().join(format!("golden/llama-{label}-upcast.safetensors"))).unwrap();
        let mut n = 0;
        for (name, info) in upcast.tensors() {
            let (ours, _) = w.read_f32(name, &info.shape).unwrap();
            let (reference, _) = upcast.to_f32(name).unwrap();
            assert_eq!(ours, reference, "{label}: {name}");
            n += 1;
        }
        assert!(n > 20, "{label}: only {n} tensors compared");
        // And the whole model loads from them.
        CausalLm::load_dir(model_dir(&format!("llama-{label}")), &default_device()).unwrap();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn load_err(dir: &Path) -> String {
    match CausalLm::load_dir(dir, &default_device()) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => chain(&e),
    }
}

/// The message with its sources, as the CLI prints it.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s += &format!(": {c}");
        cur = c.source();
    }
    s
}

#[test]
fn truncated_safetensors_is_an_error() {
    let d = temp_dir("truncated");
    copy_dir(&model_dir("llama"), &d);
    let f = d.join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 100]).unwrap();
    let msg = load_err(&d);
    assert!(msg.contains("model.safetensors") && msg.contains("truncated"), "{msg}");
    std::fs::write(&f, &bytes[..5]).unwrap();
    let msg = load_err(&d);
    assert!(msg.contains("shorter than the 8-byte header"), "{msg}");
}

#[test]
fn header_lying_about_offsets_is_an_error() {
    let d = temp_dir("lying");
    copy_dir(&model_dir("llama"), &d);
    let f = d.join("model.safetensors");
    let mut bytes = std::fs::read(&f).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    // Shift the first tensor's end offset: same header length, offsets no longer tile the data.
    let pos = header.find("\"data_offsets\":[0,").expect("a tensor starts at 0");
    let digit = pos + "\"data_offsets\":[0,".len();
    let mut h = header.into_bytes();
    h[digit] = if h[digit] == b'9' { b'1' } else { h[digit] + 1 };
    bytes[8..8 + n].copy_from_slice(&h);
    std::fs::write(&f, &bytes).unwrap();
    let msg = load_err(&d);
    assert!(msg.contains("not a valid safetensors file"), "{msg}");
}

#[test]
fn unknown_architecture_is_an_error() {
    let d = temp_dir("arch");
    copy_dir(&model_dir("llama"), &d);
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap().replace("LlamaForCausalLM", "GPT2LMHeadModel");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    let msg = load_err(&d);
    assert!(msg.contains("unsupported architecture 'GPT2LMHeadModel'") && msg.contains("Qwen3ForCausalLM"), "{msg}");
}

#[test]
fn unsupported_rope_type_is_an_error() {
    let d = temp_dir("rope");
    copy_dir(&model_dir("llama"), &d);
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap().replace("\"llama3\"", "\"yarn\"");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    let msg = load_err(&d);
    assert!(msg.contains("rope type 'yarn' is not supported"), "{msg}");
}

#[test]
fn missing_and_misshapen_tensors_are_named() {
    // A config with more layers than the weights: the first missing tensor is named.
    let d = temp_dir("missing");
    copy_dir(&model_dir("llama"), &d);
    let cfg = std::fs::read_to_string(d.join("config.json"))
        .unwrap()
        .replace("\"num_hidden_layers\": 3", "\"num_hidden_layers\": 4");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    let msg = load_err(&d);
    assert!(msg.contains("missing tensor 'model.layers.3.input_layernorm.weight'"), "{msg}");

    // Fewer layers: the leftover tensors are refused.
    let cfg = std::fs::read_to_string(d.join("config.json"))
        .unwrap()
        .replace("\"num_hidden_layers\": 4", "\"num_hidden_layers\": 2");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    let msg = load_err(&d);
    assert!(msg.contains("unexpected tensor") && msg.contains("model.layers.2."), "{msg}");

    // A wider intermediate size: the shape error names the tensor and both shapes.
    let cfg = std::fs::read_to_string(d.join("config.json"))
        .unwrap()
        .replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3")
        .replace("\"intermediate_size\": 48", "\"intermediate_size\": 50");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    let msg = load_err(&d);
    assert!(
        msg.contains("'model.layers.0.mlp.gate_proj.weight' has shape [48, 32], the config implies [50, 32]"),
        "{msg}"
    );
}

#[test]
fn missing_folder_and_bad_json_are_errors() {
    let msg = load_err(Path::new("/nonexistent/model"));
    assert!(msg.contains("/nonexistent/model: not a folder"), "{msg}");
    let d = temp_dir("badjson");
    copy_dir(&model_dir("llama"), &d);
    std::fs::write(d.join("config.json"), "{\"architectures\": [\"LlamaForCausalLM\"],\n \"vocab_size\": \"big\"}")
        .unwrap();
    let msg = load_err(&d);
    assert!(msg.ends_with("config.json:2:20: vocab_size: invalid type: string \"big\", expected usize"), "{msg}");
}

/// Heads that do not divide hidden_size (and no head_dim) are reported as the config keys at fault,
/// not as a tensor shape mismatch later.
#[test]
fn heads_that_do_not_divide_hidden_size_name_the_keys() {
    let d = temp_dir("heads");
    copy_dir(&model_dir("llama"), &d);
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
    let cfg_obj = cfg.as_object_mut().unwrap();
    cfg_obj.remove("head_dim");
    cfg_obj.insert("num_attention_heads".into(), 6.into());
    std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    let msg = load_err(&d);
    assert!(
        msg.contains(
            "config.json: hidden_size (32) is not a multiple of num_attention_heads (6), and no head_dim is given"
        ),
        "{msg}"
    );
}

#[test]
fn config_forms_resolve_alike() {
    // Hub form (qwen2 fixture) and transformers-5 form give the same rope theta.
    let hub = ModelConfig::from_file(model_dir("qwen2").join("config.json")).unwrap();
    let t5 = ModelConfig::from_file(model_dir("mistral").join("config.json")).unwrap();
    assert_eq!(hub.rope_theta, 1_000_000.0);
    assert_eq!(t5.rope_theta, 1_000_000.0);
    assert!(hub.qkv_bias && !hub.o_bias && hub.tie_word_embeddings);
    let llama = ModelConfig::from_file(model_dir("llama").join("config.json")).unwrap();
    assert_eq!(llama.head_dim, 16);
    assert_eq!(llama.eos_token_ids, vec![3, 1]);
    assert!(matches!(llama.rope_scaling, lora_core::network::config::RopeScaling::Llama3 { factor: 8.0, .. }));
    // Parameter count equals the number of values in the weights file.
    let w = Weights::open_dir(model_dir("llama")).unwrap();
    let total: usize =
        w.files().iter().flat_map(|f| f.tensors().values()).map(|i| i.shape.iter().product::<usize>()).sum();
    assert_eq!(llama.num_parameters(), total);
}

#[test]
fn pickle_only_folder_is_refused_by_name() {
    let d = temp_dir("pickle");
    copy_dir(&model_dir("llama"), &d);
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("pytorch_model.bin"), b"not read").unwrap();
    let msg = load_err(&d);
    assert!(msg.contains("pickle"), "{msg}");
}

#[test]
fn sequence_longer_than_sliding_window_is_refused() {
    let d = temp_dir("window");
    copy_dir(&model_dir("mistral"), &d);
    let cfg = std::fs::read_to_string(d.join("config.json"))
        .unwrap()
        .replace("\"sliding_window\": 4096", "\"sliding_window\": 8");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    let model = CausalLm::load_dir(&d, &default_device()).unwrap();
    assert_eq!(model.config.sliding_window, Some(8));
    // Within the window: fine. Beyond it, by prompt or by cached growth: a clear error.
    model.forward(&lora_core::TokenBatch::single(vec![5; 8]), None).unwrap();
    let err = model.forward(&lora_core::TokenBatch::single(vec![5; 9]), None).unwrap_err().to_string();
    assert!(err.contains("exceeds the sliding window of 8"), "{err}");
    let mut cache = lora_core::generation::kv_cache::KvCache::new(model.config.num_hidden_layers);
    model.forward(&lora_core::TokenBatch::single(vec![5; 8]), Some(&mut cache)).unwrap();
    assert!(model.forward(&lora_core::TokenBatch::single(vec![5]), Some(&mut cache)).is_err());
}

/// The text form of Qwen3.5 may carry the multi-token-prediction head (`mtp.*`) as the Hub form
/// does: both load and skip it; any other stray tensor is still refused.
#[test]
fn qwen3_5_text_form_carries_mtp_tensors_and_refuses_others() {
    use safetensors::tensor::{Dtype, TensorView};
    let with_extra = |tag: &str, extra: &str| {
        let d = temp_dir(tag);
        copy_dir(&model_dir("qwen3_5"), &d);
        let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut views: Vec<(String, TensorView<'_>)> = st.tensors();
        let data = vec![0u8; 4 * 8 * 4];
        views.push((extra.to_string(), TensorView::new(Dtype::F32, vec![8, 4], &data).unwrap()));
        safetensors::serialize_to_file(views, None, &d.join("model.safetensors")).unwrap();
        d
    };
    let d = with_extra("mtp-text", "mtp.fc.weight");
    CausalLm::load_dir(&d, &default_device()).unwrap();
    let d = with_extra("stray-text", "model.extra.weight");
    let msg = load_err(&d);
    assert!(msg.contains("unexpected tensor") && msg.contains("model.extra.weight"), "{msg}");
}

/// Untied embeddings stay in their file and are read a row per token; the rows are the values a table
/// loaded whole gives, in every stored and held dtype (f32 and bf16 files, held as f32, bf16, f16),
/// and a base that holds them counts no bytes for them.
#[test]
fn embeddings_read_from_the_file_equal_the_loaded_table() {
    use lora_core::burn::tensor::DType;
    use lora_core::network::embedding::Embedding;
    let device = default_device();
    for model in ["llama", "llama-bf16", "qwen3_5"] {
        let dir = model_dir(model);
        let config = ModelConfig::from_file(dir.join("config.json")).unwrap();
        assert!(!config.tie_word_embeddings, "{model}");
        let name = format!("{}.embed_tokens.weight", config.text_prefix);
        let shape = [config.vocab_size, config.hidden_size];
        let ids = vec![vec![0u32, 5, 17], vec![(config.vocab_size - 1) as u32, 5, 2]];
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let w = Weights::open_dir(&dir).unwrap();
            let rows = w.file_rows(&name, shape, dtype).unwrap();
            let from_file = match rows {
                Some(rows) => Embedding::from_file(rows, &device),
                // An f32 file held as f16 is range-checked whole at load instead.
                None => {
                    assert_eq!(dtype, DType::F16, "{model}");
                    continue;
                }
            };
            let resident =
                Embedding::resident(Weights::open_dir(&dir).unwrap().tensor_as(&name, shape, dtype, &device).unwrap());
            let a = lora_core::to_f32_vec(from_file.forward(&ids, &device).unwrap()).unwrap();
            let b = lora_core::to_f32_vec(resident.forward(&ids, &device).unwrap()).unwrap();
            assert_eq!(a.len(), 6 * config.hidden_size);
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{model} {dtype:?}");
            assert!(a.iter().any(|&v| v != 0.0), "{model}");
            assert_eq!(from_file.bytes(), 0);
        }
        // Loaded: the table is not held, and a token beyond the vocabulary is still refused.
        let m = CausalLm::load_dir(&dir, &device).unwrap();
        assert!(m.model.embed_tokens.in_file.is_some() && m.model.embed_tokens.bytes() == 0, "{model}");
        let bad = lora_core::TokenBatch::rows(vec![vec![config.vocab_size as u32]]);
        assert!(m.forward(&bad, None).is_err());
    }
}
