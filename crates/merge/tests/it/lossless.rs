//! Folds that lose nothing (tests/fixtures/models/qwen3_5-hub-bf16, from
//! scripts/make_qwen3_5_mixed_fixtures.py: bf16 weights with f32 A_log and Gated DeltaNet norms, an
//! mtp tensor and a vision-language checkpoint's processor files).

use std::path::Path;

use lora_merge::dtype::DType;
use lora_merge::{FoldOptions, ModelDir, fold_adapters};

use crate::common::*;

fn base() -> std::path::PathBuf {
    fixtures().join("models/qwen3_5-hub-bf16")
}

fn adapter() -> std::path::PathBuf {
    fixtures().join("golden/qwen3_5-hub-bf16-adapter")
}

/// Every file of the base but the weights, config.json and the card.
fn side_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".safetensors") && n != "config.json" && n != "README.md")
        .collect();
    names.sort();
    names
}

#[test]
fn a_fold_keeps_every_untouched_tensor_byte_for_byte_in_its_dtype_and_every_file() {
    let dir = temp_dir("lossless-fold");
    let out = dir.join("merged");
    let r = fold_adapters(&base(), &[adapter()], &out, &FoldOptions::default()).unwrap();
    assert!(r.kept_f32.is_empty(), "no conversion, nothing to keep: {:?}", r.kept_f32);
    assert_eq!(r.dtype, DType::BF16);
    let (b, m) = (ModelDir::open(base()).unwrap(), ModelDir::open(&out).unwrap());
    let peft = load_all(&adapter().join("merged.safetensors"));
    assert_eq!(m.names().collect::<Vec<_>>(), b.names().collect::<Vec<_>>(), "the same tensors, mtp.* included");
    let (mut same, mut changed) = (0, 0);
    for name in b.names() {
        let (bt, mt) = (b.get(name).unwrap(), m.get(name).unwrap());
        assert_eq!(mt.info.dtype, bt.info.dtype, "{name} keeps its stored dtype");
        if peft.contains_key(name) {
            changed += 1;
            assert_ne!(mt.bytes(), bt.bytes(), "{name} is folded");
        } else {
            same += 1;
            assert_eq!(mt.bytes(), bt.bytes(), "{name} is copied byte for byte");
        }
    }
    assert_eq!(changed, 14, "5 Gated DeltaNet projections of 2 layers, q_proj of 1, down_proj of 3");
    assert!(same > 40);
    for suffix in ["layers.0.linear_attn.A_log", "layers.1.linear_attn.norm.weight"] {
        let name = format!("model.language_model.{suffix}");
        assert_eq!(m.get(&name).unwrap().info.dtype, DType::F32, "{name} stays f32");
    }
    // Folded weights: PEFT's merge_and_unload on the model in bf16, within bf16 rounding.
    let ours = load_all(&out);
    for (name, want) in &peft {
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = max_diff(&ours[name], want);
        assert!(d <= scale * 2f32.powi(-7), "{name}: max |Δ| {d} against scale {scale}");
    }
    // Every other file, unchanged; config.json says bfloat16.
    assert_eq!(side_files(&out), side_files(&base()));
    for f in side_files(&base()) {
        assert_eq!(std::fs::read(out.join(&f)).unwrap(), std::fs::read(base().join(&f)).unwrap(), "{f}");
    }
    for f in
        ["preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json", "chat_template.jinja"]
    {
        assert!(out.join(f).is_file(), "{f} is kept");
    }
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["dtype"], "bfloat16");
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.contains("keeps its stored dtype"), "{card}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_explicit_dtype_converts_all_but_the_tensors_the_architecture_keeps_in_f32() {
    let dir = temp_dir("lossless-f16");
    let out = dir.join("merged");
    let opts = FoldOptions { dtype: Some(DType::F16), ..FoldOptions::default() };
    let r = fold_adapters(&base(), &[adapter()], &out, &opts).unwrap();
    assert_eq!(r.dtype, DType::F16);
    let want_kept: Vec<String> =
        ["0.linear_attn.A_log", "0.linear_attn.norm.weight", "1.linear_attn.A_log", "1.linear_attn.norm.weight"]
            .iter()
            .map(|s| format!("model.language_model.layers.{s}"))
            .collect();
    let mut kept = r.kept_f32.clone();
    kept.sort();
    assert_eq!(kept, want_kept);
    let (b, m) = (ModelDir::open(base()).unwrap(), ModelDir::open(&out).unwrap());
    for name in b.names() {
        let want = if want_kept.iter().any(|k| k == name) { DType::F32 } else { DType::F16 };
        assert_eq!(m.get(name).unwrap().info.dtype, want, "{name}");
        if want == DType::F32 {
            assert_eq!(m.get(name).unwrap().bytes(), b.get(name).unwrap().bytes(), "{name} untouched");
        }
    }
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["dtype"], "float16");
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.contains("except 4 kept in float32") && card.contains("layers.0.linear_attn.A_log"), "{card}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The same rules for mergekit's methods and for a fold into the NF4-requantized base: stored dtypes
/// by default (A_log and the GDN norms stay f32), an explicit out_dtype keeps the f32 tensors, every
/// file of the base is there.
#[test]
fn merges_and_quantized_base_folds_keep_dtypes_and_files() {
    let dir = temp_dir("lossless-merge");
    let b = ModelDir::open(base()).unwrap();
    let a_log = "model.language_model.layers.0.linear_attn.A_log";
    for (name, out_dtype) in [("stored", ""), ("f16", "out_dtype = \"float16\"\n")] {
        let cfg = dir.join(format!("{name}.toml"));
        let base_path = base().display().to_string();
        std::fs::write(
            &cfg,
            format!(
                "merge_method = \"linear\"\n{out_dtype}[[models]]\nmodel = \"{base_path}\"\nparameters = {{ weight = 0.5 }}\n\
                 [[models]]\nmodel = \"{base_path}\"\nparameters = {{ weight = 0.5 }}\n"
            ),
        )
        .unwrap();
        let out = dir.join(name);
        let r = lora_merge::merge_models(&cfg, &out, &lora_merge::MergeOptions::default()).unwrap();
        let m = ModelDir::open(&out).unwrap();
        assert_eq!(m.get(a_log).unwrap().info.dtype, DType::F32, "{name}: A_log stays f32");
        let other = if out_dtype.is_empty() { DType::BF16 } else { DType::F16 };
        assert_eq!(m.get("model.language_model.embed_tokens.weight").unwrap().info.dtype, other, "{name}");
        assert_eq!(r.kept_f32.len(), if out_dtype.is_empty() { 0 } else { 4 }, "{name}: {:?}", r.kept_f32);
        // Half of a model plus half of itself is itself: the f32 tensors come out as they went in.
        assert_eq!(m.get(a_log).unwrap().bytes(), b.get(a_log).unwrap().bytes(), "{name}");
        for f in side_files(&base()) {
            assert!(out.join(&f).is_file(), "{name}: {f} is kept");
        }
    }
    let out = dir.join("nf4");
    let opts = FoldOptions { nf4_base: Some(false), ..FoldOptions::default() };
    fold_adapters(&base(), &[adapter()], &out, &opts).unwrap();
    let m = ModelDir::open(&out).unwrap();
    for name in b.names() {
        assert_eq!(m.get(name).unwrap().info.dtype, b.get(name).unwrap().info.dtype, "{name} keeps its dtype");
    }
    assert_eq!(m.get(a_log).unwrap().bytes(), b.get(a_log).unwrap().bytes());
    assert_eq!(side_files(&out), side_files(&base()));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `lora quantize` writes what transformers + bitsandbytes write for the same folder
/// (tests/fixtures/models/llama-bnb4 and -dq): the same tensors, byte for byte (codes, scales, nested
/// scales, maps), the same quant states and quantization_config.
#[test]
fn quantize_writes_the_four_bit_checkpoint_transformers_writes() {
    let dir = temp_dir("quantize");
    for (name, double_quant) in [("llama-bnb4", false), ("llama-bnb4-dq", true)] {
        let out = dir.join(name);
        let opts = lora_merge::QuantizeOptions { double_quant, ..Default::default() };
        let r = lora_merge::quantize_model(&fixtures().join("models/llama"), &out, &opts).unwrap();
        assert_eq!(r.quantized, 3 * 7, "{name}: seven linear layers in each of three layers");
        let (ours, theirs) =
            (ModelDir::open(&out).unwrap(), ModelDir::open(fixtures().join("models").join(name)).unwrap());
        let mut names: Vec<&str> = ours.names().collect();
        let mut want: Vec<&str> = theirs.names().collect();
        names.sort();
        want.sort();
        assert_eq!(names, want, "{name}: tensor names");
        for n in want {
            let (a, b) = (ours.get(n).unwrap(), theirs.get(n).unwrap());
            assert_eq!((a.info.dtype, &a.info.shape), (b.info.dtype, &b.info.shape), "{name}: {n}");
            if n.ends_with("quant_state.bitsandbytes__nf4") {
                let parse = |t: &[u8]| serde_json::from_slice::<serde_json::Value>(t).unwrap();
                assert_eq!(parse(a.bytes()), parse(b.bytes()), "{name}: {n}");
            } else {
                assert!(a.bytes() == b.bytes(), "{name}: {n} differs");
            }
        }
        let config = |d: &Path| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(d.join("config.json")).unwrap()).unwrap()
        };
        assert_eq!(
            config(&out)["quantization_config"],
            config(&fixtures().join("models").join(name))["quantization_config"],
            "{name}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A fold into a bitsandbytes 4-bit base writes the dense model, dequantized, with the adapter
/// folded in: the tensors of a fold into the source folder with --quantized-base nf4 (the same codes),
/// none of the 4-bit parts, no quantization_config; the 4-bit weights in bf16 unless --dtype says.
#[test]
fn a_fold_into_a_four_bit_base_writes_it_dequantized() {
    let dir = temp_dir("fold-four-bit");
    let adapter = fixtures().join("lora/adapter-trained");
    let f32 = FoldOptions { dtype: Some(DType::F32), ..FoldOptions::default() };
    let four = dir.join("four");
    fold_adapters(&fixtures().join("models/llama-bnb4-dq"), &[adapter.clone()], &four, &f32).unwrap();
    let source = dir.join("source");
    let nf4 = FoldOptions { nf4_base: Some(true), ..f32.clone() };
    fold_adapters(&fixtures().join("models/llama"), &[adapter.clone()], &source, &nf4).unwrap();
    assert_eq!(load_all(&four), load_all(&source));
    let m = ModelDir::open(&four).unwrap();
    assert!(m.names().all(|n| !n.contains("absmax") && !n.contains("quant_")), "no 4-bit parts");
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(four.join("config.json")).unwrap()).unwrap();
    assert!(config.get("quantization_config").is_none());
    // By default the dequantized weights are bf16.
    let bf16 = dir.join("bf16");
    fold_adapters(&fixtures().join("models/llama-bnb4"), &[adapter], &bf16, &FoldOptions::default()).unwrap();
    let m = ModelDir::open(&bf16).unwrap();
    assert_eq!(m.get("model.layers.0.self_attn.q_proj.weight").unwrap().info.dtype, DType::BF16);
    assert_eq!(m.get("model.layers.0.self_attn.q_proj.weight").unwrap().info.shape, vec![64, 32]);
    assert_eq!(m.get("model.embed_tokens.weight").unwrap().info.dtype, DType::F32, "dense tensors keep theirs");
    std::fs::remove_dir_all(&dir).unwrap();
}
