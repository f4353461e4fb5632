//! GGUF model files (llama.cpp's `convert_hf_to_gguf.py` output of the fixture models, from
//! scripts/make_gguf_fixtures.py) load as the Hugging Face folders they came from: same
//! configuration, same logits, q/k rows of `llama` files put back in order, NF4 from either equal.

use lora_core::kernels::host::to_f32_vec;
use lora_core::network::model::{CausalLm, TokenBatch};
use lora_core::{BaseDtype, LoadOptions, Quantize, default_device};
use lora_formats::gguf::{TensorOut, Value, write};

use crate::common::*;

fn batch() -> TokenBatch {
    TokenBatch::left_padded(&[vec![0, 17, 250, 33, 100, 7, 301, 45], vec![5, 300, 21, 9, 44]], 4)
}

#[test]
fn gguf_models_equal_their_hugging_face_folders() {
    let device = default_device();
    for name in ["llama", "qwen2", "qwen3"] {
        let gguf = fixtures().join(format!("gguf/{name}-f32.gguf"));
        let ours = CausalLm::load_dir(&gguf, &device).unwrap();
        let hf = CausalLm::load_dir(model_dir(name), &device).unwrap();
        let (a, b) = (&ours.config, &hf.config);
        assert_eq!(
            (a.architecture, a.vocab_size, a.hidden_size, a.intermediate_size, a.num_hidden_layers),
            (b.architecture, b.vocab_size, b.hidden_size, b.intermediate_size, b.num_hidden_layers),
            "{name}"
        );
        assert_eq!(
            (a.num_attention_heads, a.num_key_value_heads, a.head_dim, a.qkv_bias, a.o_bias, a.mlp_bias, a.qk_norm),
            (b.num_attention_heads, b.num_key_value_heads, b.head_dim, b.qkv_bias, b.o_bias, b.mlp_bias, b.qk_norm),
            "{name}"
        );
        assert_eq!(a.tie_word_embeddings, b.tie_word_embeddings, "{name}");
        let x = to_f32_vec(ours.forward(&batch(), None).unwrap()).unwrap();
        let y = to_f32_vec(hf.forward(&batch(), None).unwrap()).unwrap();
        let d = max_abs_diff(&x, &y);
        assert!(d <= 1e-4, "{name}: GGUF vs folder logits max |Δ| {d:e}");
    }
}

/// The q/k rows are restored exactly, so NF4 blocks (which run across rows) come out the same.
#[test]
fn nf4_from_gguf_equals_nf4_from_the_folder() {
    let device = default_device();
    let opts = LoadOptions { dtype: BaseDtype::F32, quantize: Quantize::Nf4 { double_quant: false } };
    let ours = CausalLm::load_dir_with(fixtures().join("gguf/llama-f32.gguf"), &device, &opts).unwrap();
    let hf = CausalLm::load_dir_with(model_dir("llama"), &device, &opts).unwrap();
    for ((p, a), (_, b)) in ours.linear_modules().iter().zip(hf.linear_modules().iter()) {
        assert_eq!(a.weight.bytes(), b.weight.bytes(), "{p}");
        let wa = to_f32_vec(a.weight.to_f32(&device)).unwrap();
        let wb = to_f32_vec(b.weight.to_f32(&device)).unwrap();
        assert!(wa == wb, "{p}: weights differ");
    }
}

#[test]
fn unsupported_gguf_models_are_named() {
    let d = temp_dir("gguf-arch");
    let p = d.join("gemma.gguf");
    let meta = vec![("general.architecture".to_string(), Value::String("gemma".into()))];
    let t = TensorOut {
        name: "token_embd.weight".into(),
        dims: vec![4, 2],
        ggml_type: lora_formats::gguf::GgmlType::F32,
        data: vec![0; 32],
    };
    write(&p, &meta, &[t], false).unwrap();
    let e = CausalLm::load_dir(&p, &default_device()).unwrap_err().to_string();
    assert!(e.contains("architecture 'gemma' is not supported") && e.contains("gemma.gguf"), "{e}");
    let p = d.join("nokeys.gguf");
    write(&p, &[("general.architecture".to_string(), Value::String("llama".into()))], &[], false).unwrap();
    let e = CausalLm::load_dir(&p, &default_device()).unwrap_err().to_string();
    assert!(e.contains("token_embd.weight") || e.contains("missing key llama."), "{e}");
}

/// The tokenizer built from `tokenizer.ggml.*` encodes and decodes as the folder's tokenizer.json.
#[test]
fn gguf_tokenizer_equals_the_folders_tokenizer_json() {
    let g = lora_formats::gguf::GgufFile::open(fixtures().join("gguf/llama-f32.gguf")).unwrap();
    let ours = lora_core::Tokenizer::from_gguf(&g).unwrap();
    let hf_model = CausalLm::load_dir(model_dir("llama"), &default_device()).unwrap();
    let hf = lora_core::Tokenizer::load_dir(model_dir("llama"), &hf_model.config).unwrap();
    let texts = [
        "",
        "a",
        "In the beginning God created the heaven and the earth.",
        "  spaces   and\ttabs\nnew lines\r\n",
        "unicode: héllo wörld 🦙 中文 123456789",
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "don't won't I'll they've",
    ];
    for text in texts {
        for special in [true, false] {
            let (a, b) = (ours.encode(text, special).unwrap(), hf.encode(text, special).unwrap());
            assert_eq!(a, b, "{text:?} (special tokens {special})");
            assert_eq!(ours.decode(&a, false).unwrap(), hf.decode(&b, false).unwrap(), "{text:?}");
        }
    }
    assert_eq!((ours.bos_token_id, ours.pad_token_id), (Some(0), Some(4)));
    assert_eq!(ours.eos_token_ids, vec![3]);
    assert!(ours.chat_template.as_deref().is_some_and(|t| t.contains("<|im_start|>")));
}

/// SentencePiece GGUF vocabularies (`tokenizer.ggml.model = "llama"`) split as llama.cpp splits them:
/// llama.cpp's own tokenizer test vectors for LLaMA's 32,000 pieces (tests/test-tokenizer-0), and
/// llama.cpp's ids, with and without BOS, for that vocabulary and for a 512-piece SentencePiece model
/// through llama.cpp's converter (scripts/make_spm_tokenizer_fixtures.py). Text decodes back.
#[test]
fn sentencepiece_gguf_tokenizers_split_as_llama_cpp() {
    let dir = fixtures().join("gguf/vocab");
    let open = |name: &str| {
        let g = lora_formats::gguf::GgufFile::open(dir.join(name)).unwrap();
        lora_core::Tokenizer::from_gguf(&g).unwrap()
    };
    let llama = open("ggml-vocab-llama-spm.gguf");
    let inp = std::fs::read_to_string(dir.join("ggml-vocab-llama-spm.gguf.inp")).unwrap();
    let out = std::fs::read_to_string(dir.join("ggml-vocab-llama-spm.gguf.out")).unwrap();
    let texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let texts = &texts[..texts.len() - 1];
    assert!(texts.len() >= 30, "{} test vectors", texts.len());
    for (text, line) in texts.iter().zip(out.split('\n')) {
        let want: Vec<u32> = line.split_whitespace().map(|x| x.parse().unwrap()).collect();
        let ids = llama.encode(text, false).unwrap();
        assert_eq!(ids, want, "{text:?}");
        assert_eq!(llama.decode(&ids, false).unwrap(), *text, "decoding {text:?}");
    }
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("spm.json")).unwrap()).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
    };
    for (tok, name) in [(&llama, "llama-spm"), (&open("spm-tiny.gguf"), "spm-tiny")] {
        for (i, text) in golden["texts"].as_array().unwrap().iter().enumerate() {
            let text = text.as_str().unwrap();
            assert_eq!(tok.encode(text, false).unwrap(), ids(&golden[name]["special"][i]), "{name}: {text:?}");
            assert_eq!(tok.encode(text, true).unwrap(), ids(&golden[name]["bos_special"][i]), "{name}: BOS {text:?}");
            if !text.contains('<') {
                assert_eq!(tok.decode(&tok.encode(text, true).unwrap(), true).unwrap(), text, "{name}: {text:?}");
            }
        }
        assert_eq!((tok.bos_token_id, tok.eos_token_ids.as_slice()), (Some(1), &[2][..]), "{name}");
    }
}

/// llama.cpp itself (through llama-cpp-python, scripts/make_llama_cpp_fixtures.py): lora's reading of
/// the converted GGUF model, and of the converted LoRA adapter on it, gives llama.cpp's logits.
#[test]
fn gguf_model_and_adapter_give_llama_cpps_logits() {
    let golden = fixtures().join("gguf/llama_cpp.safetensors");
    let g = lora_formats::safetensors::SafetensorsFile::open(&golden).unwrap();
    let (ids, _) = golden_i64(&g, "input_ids");
    let batch = TokenBatch::single(ids.iter().map(|&i| i as u32).collect());
    let device = default_device();
    let mut model = CausalLm::load_dir(fixtures().join("gguf/llama-f32.gguf"), &device).unwrap();
    let ours = to_f32_vec(model.forward(&batch, None).unwrap()).unwrap();
    let d = max_abs_diff(&ours, &golden_f32(&g, "logits.llama-f32").0);
    assert!(d <= 1e-4, "base: max |Δ| vs llama.cpp {d:e}");
    lora_core::adapter::load_adapter(&mut model, &fixtures().join("gguf/adapter-qv.gguf"), 1.0, false).unwrap();
    let ours = to_f32_vec(model.forward(&batch, None).unwrap()).unwrap();
    let d = max_abs_diff(&ours, &golden_f32(&g, "logits.llama-f32+adapter-qv").0);
    assert!(d <= 1e-4, "base + adapter: max |Δ| vs llama.cpp {d:e}");
    // The PEFT folder on the Hugging Face model gives the same numbers.
    let mut hf = CausalLm::load_dir(model_dir("llama"), &device).unwrap();
    lora_core::adapter::load_adapter(&mut hf, &fixtures().join("lora/adapter-qv"), 1.0, false).unwrap();
    let theirs = to_f32_vec(hf.forward(&batch, None).unwrap()).unwrap();
    assert!(max_abs_diff(&theirs, &golden_f32(&g, "logits.llama-f32+adapter-qv").0) <= 1e-4);
}

#[test]
fn a_gguf_adapter_for_another_architecture_is_refused() {
    let mut qwen = CausalLm::load_dir(model_dir("qwen2"), &default_device()).unwrap();
    let e = lora_core::adapter::load_adapter(&mut qwen, &fixtures().join("gguf/adapter-qv.gguf"), 1.0, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("an adapter for 'llama' models, not for this 'qwen2' model"), "{e}");
}

/// llama.cpp's `qwen35` files (its converter's output of tiny Qwen3.5 models, from
/// scripts/make_qwen35_gguf_fixtures.py) give transformers' logits on the folders they came from: the
/// value heads put back from tiled to grouped order, the norms' +1, `ssm_a`, `ssm_dt` and the squeezed
/// convolution undone; the Hub form with its multi-token-prediction block (one more block, not run)
/// and its vision tower left out by the converter; F16 to f16's precision.
#[test]
fn qwen35_gguf_files_give_transformers_logits() {
    let device = default_device();
    let golden = lora_formats::safetensors::SafetensorsFile::open(fixtures().join("gguf/qwen35.safetensors")).unwrap();
    for (file, name, layers, tol) in [
        ("qwen35-text.gguf", "qwen35-text", 5, 1e-4),
        ("qwen35-hub-mtp.gguf", "qwen35-hub-mtp", 3, 1e-4),
        // f16 weights of a randomized model: 1% of the largest logit; the weights are checked exactly below.
        ("qwen35-text-f16.gguf", "qwen35-text", 5, 6e-2),
    ] {
        let m = CausalLm::load_dir(fixtures().join("gguf").join(file), &device).unwrap();
        let c = &m.config;
        assert_eq!(c.architecture, lora_core::Architecture::Qwen3_5, "{file}");
        assert_eq!(c.num_hidden_layers, layers, "{file}: the MTP block is not a decoder layer");
        let l = c.linear_attention.as_ref().unwrap();
        assert_eq!((l.num_key_heads, l.num_value_heads, l.key_head_dim, l.conv_kernel), (2, 6, 8, 3), "{file}");
        let (ids, shape) = golden_i64(&golden, &format!("{name}.input_ids"));
        let rows: Vec<Vec<u32>> = ids.chunks(shape[1]).map(|r| r.iter().map(|&i| i as u32).collect()).collect();
        let x = to_f32_vec(m.forward(&TokenBatch::rows(rows), None).unwrap()).unwrap();
        let (want, _) = golden_f32(&golden, &format!("{name}.logits"));
        let d = max_abs_diff(&x, &want);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(d <= tol, "{file}: logits max |Δ| {d:e} against transformers (largest |logit| {scale})");
    }
    // The text form's layer pattern is not of period 4: it comes from attention.recurrent_layers.
    let m = CausalLm::load_dir(fixtures().join("gguf/qwen35-text.gguf"), &device).unwrap();
    let full: Vec<bool> = m.model.layers.iter().map(|l| l.self_attn.is_some()).collect();
    assert_eq!(full, [false, true, false, false, true]);
    // The F16 file's linear weights are the F32 file's rounded to f16, value heads restored alike.
    let h = CausalLm::load_dir(fixtures().join("gguf/qwen35-text-f16.gguf"), &device).unwrap();
    for ((p, a), (_, b)) in m.linear_modules().iter().zip(h.linear_modules().iter()) {
        let f32_weight = a.weight.to_f32(&device);
        let rounded =
            to_f32_vec(f32_weight.cast(lora_core::burn::tensor::DType::F16).cast(lora_core::burn::tensor::DType::F32))
                .unwrap();
        let from_f16 = to_f32_vec(b.weight.to_f32(&device)).unwrap();
        assert!(rounded == from_f16, "{p}: the F16 file's weight is not the F32 file's rounded to f16");
    }
}

/// A `qwen35` file written out as a Hugging Face folder (what `lora merge` does with a GGUF base) holds
/// the weights lora reads from the file, under Hugging Face's names and layouts, without the
/// multi-token-prediction block: the folder gives the file's logits to the bit.
#[test]
fn a_qwen35_gguf_becomes_the_folder_it_came_from() {
    let device = default_device();
    let d = temp_dir("qwen35-folder");
    for file in ["qwen35-text.gguf", "qwen35-hub-mtp.gguf"] {
        let path = fixtures().join("gguf").join(file);
        let dir = d.join(file);
        lora_core::io::gguf::to_folder::gguf_to_folder(&path, &dir).unwrap();
        let st = lora_formats::safetensors::SafetensorsFile::open(dir.join("model.safetensors")).unwrap();
        assert!(st.tensors().keys().all(|n| !n.starts_with("mtp.") && !n.contains("nextn")), "{file}");
        assert!(st.tensors().contains_key("model.layers.0.linear_attn.A_log"), "{file}");
        let a = CausalLm::load_dir(&path, &device).unwrap();
        let b = CausalLm::load_dir(&dir, &device).unwrap();
        let x = to_f32_vec(a.forward(&batch(), None).unwrap()).unwrap();
        let y = to_f32_vec(b.forward(&batch(), None).unwrap()).unwrap();
        assert!(x == y, "{file}: the folder's logits differ from the file's");
    }
}
