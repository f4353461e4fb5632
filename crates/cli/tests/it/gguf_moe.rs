//! Mixture-of-experts models in GGUF, both ways (`scripts/make_moe_gguf_fixtures.py`): `lora export`
//! writes the files llama.cpp's converter writes for `qwen3moe`, Mixtral (`llama` with stacked
//! experts) and `qwen35moe`, lora reads the converter's files (gate and up apart, or merged into
//! `ffn_gate_up_exps`) as llama.cpp runs them, and the adapters it exports on experts (3-D `lora_a` / `lora_b`) run in
//! llama.cpp as the PEFT adapters run in lora.

use std::path::{Path, PathBuf};

use lora_formats::gguf::{GgufFile, Value};

use crate::common::*;

fn gguf(name: &str) -> PathBuf {
    fixtures().join("gguf").join(name)
}

/// llama.cpp's run of the fixtures: the probe rows and `logits.<key>`.
struct LlamaCpp {
    rows: Vec<Vec<u32>>,
    file: lora_formats::safetensors::SafetensorsFile,
}

impl LlamaCpp {
    fn open() -> Self {
        let file = lora_formats::safetensors::SafetensorsFile::open(gguf("moe_llama_cpp.safetensors")).unwrap();
        let ids: Vec<u32> = file
            .bytes(file.info("input_ids").unwrap())
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect();
        let rows = ids.chunks(ids.len() / 2).map(<[u32]>::to_vec).collect();
        Self { rows, file }
    }

    fn logits(&self, key: &str) -> Vec<f32> {
        self.file.to_f32(&format!("logits.{key}")).unwrap().0
    }

    /// lora's logits of `model` (with `adapter`), each probe row on its own, flattened.
    fn ours(&self, model: &Path, adapter: Option<&Path>) -> Vec<f32> {
        let device = lora_core::default_device();
        let mut m = lora_core::CausalLm::load_dir(model, &device).unwrap();
        if let Some(a) = adapter {
            lora_core::adapter::load_adapter(&mut m, a, 1.0, false).unwrap();
        }
        let mut out = Vec::new();
        for row in &self.rows {
            let batch = lora_core::TokenBatch::rows(vec![row.clone()]);
            out.extend(lora_core::to_f32_vec(m.forward(&batch, None).unwrap()).unwrap());
        }
        out
    }
}

fn close(what: &str, ours: &[f32], theirs: &[f32]) {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
    let d = max_abs_diff(ours, theirs);
    assert!(d <= 1e-4, "{what}: max |Δ| vs llama.cpp {d:e}");
}

/// Every tensor of the converter's file `theirs` is in `ours` with its dimensions, type and values:
/// to the bit, but for −exp(A_log), where torch's exp and Rust's may round the last bit apart
/// (within 2e-7 relative). Returns how many stacked expert tensors were compared.
fn assert_converter_tensors(what: &str, ours: &GgufFile, theirs: &GgufFile) -> usize {
    let mut stacked = 0;
    for t in &theirs.tensors {
        let o = ours.tensor(&t.name).unwrap_or_else(|| panic!("{what}: {} missing", t.name));
        assert_eq!((&o.dims, o.type_id), (&t.dims, t.type_id), "{what}: {}", t.name);
        let (a, b) = (ours.to_f32(o).unwrap(), theirs.to_f32(t).unwrap());
        if t.name.ends_with(".ssm_a") {
            let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs() / y.abs().max(1e-3)).fold(0.0, f32::max);
            assert!(worst <= 2e-7, "{what}: {} off by {worst:e} relative", t.name);
        } else {
            assert!(a == b, "{what}: {} differs", t.name);
        }
        stacked += usize::from(t.name.ends_with("_exps.weight"));
    }
    stacked
}

/// `lora export` of a MoE folder is the converter's file: every metadata key of theirs with its
/// value, every tensor (the experts stacked, the router in F32) with its dimensions, type and values.
#[test]
fn moe_model_export_equals_the_converter() {
    let d = temp_dir("gguf-moe-export");
    for (folder, theirs) in [
        ("models/qwen3_moe-sparse", "qwen3moe-f32.gguf"),
        ("models/mixtral", "mixtral-f32.gguf"),
        ("gguf/qwen35moe", "qwen35moe-f32.gguf"),
    ] {
        let out = d.join(theirs);
        let o = lora(&["export", s(&fixtures().join(folder)), "-o", s(&out), "--type", "f32"]);
        assert!(o.status.success(), "{folder}: {}", stderr(&o));
        let (ours, theirs) = (GgufFile::open(&out).unwrap(), GgufFile::open(gguf(theirs)).unwrap());
        for (k, v) in &theirs.metadata {
            if ["general.name", "general.size_label", "general.basename", "tokenizer.ggml.add_sep_token"]
                .contains(&k.as_str())
            {
                continue;
            }
            let o = ours.get(k).unwrap_or_else(|| panic!("{folder}: key {k} missing"));
            match (o, v) {
                (Value::F32(a), Value::F32(b)) => assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{folder}: {k}"),
                _ => assert_eq!(o, v, "{folder}: {k}"),
            }
        }
        if theirs.get("general.architecture").and_then(Value::as_str) == Some("qwen35moe") {
            // In the converter's order too, as for the dense qwen35.
            let keys = |g: &GgufFile| -> Vec<String> {
                g.metadata.iter().map(|(k, _)| k.clone()).filter(|k| k.starts_with("qwen35moe.")).collect()
            };
            assert_eq!(keys(&ours), keys(&theirs), "{folder}: keys and their order");
        }
        assert_eq!(ours.tensors.len(), theirs.tensors.len(), "{folder}: tensor count");
        let stacked = assert_converter_tensors(folder, &ours, &theirs);
        assert!(stacked >= 9, "{folder}: {stacked} stacked expert tensors");
    }
    // What llama.cpp's qwen3moe cannot run is refused, naming why, and nothing is written.
    for (folder, needle) in [("qwen3_moe", "mlp_only_layers"), ("qwen3_moe-k1", "norm_topk_prob")] {
        let out = d.join(format!("{folder}.gguf"));
        let o = lora(&["export", s(&fixtures().join("models").join(folder)), "-o", s(&out)]);
        assert_user_error(&o, needle);
        assert!(!out.exists(), "{folder}");
    }
}

/// lora reads the converter's MoE files (experts stacked; gate and up apart or merged) as llama.cpp
/// runs them, and as the folders they came from run in lora.
#[test]
fn moe_gguf_files_run_as_llama_cpp_runs_them() {
    let l = LlamaCpp::open();
    for (file, key, folder) in [
        ("qwen3moe-f32.gguf", "qwen3moe", "models/qwen3_moe-sparse"),
        ("mixtral-f32.gguf", "mixtral", "models/mixtral"),
        ("qwen35moe-f32.gguf", "qwen35moe", "gguf/qwen35moe"),
        ("qwen35moe-fused-f32.gguf", "qwen35moe-fused", "gguf/qwen35moe"),
    ] {
        let ours = l.ours(&gguf(file), None);
        close(key, &ours, &l.logits(key));
        let from_folder = l.ours(&fixtures().join(folder), None);
        let d = max_abs_diff(&ours, &from_folder);
        assert!(d <= 1e-5, "{file}: max |Δ| vs the folder {d:e}");
    }
    let fused = GgufFile::open(gguf("qwen35moe-fused-f32.gguf")).unwrap();
    assert!(fused.tensor("blk.0.ffn_gate_up_exps.weight").is_some(), "the fixture holds merged gate_up experts");
    assert!(fused.tensor("blk.0.ffn_gate_exps.weight").is_none());
}

/// `lora export ADAPTER --base MODEL.gguf` of adapters on experts (PEFT's flattened layout, with
/// gate_up at its own rank and alpha) writes 3-D pairs that llama.cpp applies as lora applies the
/// PEFT adapter; against a base with merged `ffn_gate_up_exps` it writes pairs on that tensor. lora
/// reads those files back as llama.cpp runs them.
#[test]
fn expert_adapters_export_for_llama_cpp() {
    let l = LlamaCpp::open();
    let d = temp_dir("gguf-moe-adapters");
    let qwen_adapter = gguf("qwen3moe-adapter");
    let mixtral_adapter = fixtures().join("mixtral-experts-replay/adapter-trained");
    let qwen35_adapter = gguf("qwen35moe-adapter");
    for (adapter, base, folder, fixture, key) in [
        (&qwen_adapter, "qwen3moe-f32.gguf", "models/qwen3_moe-sparse", "qwen3moe-adapter.gguf", "qwen3moe+adapter"),
        (&mixtral_adapter, "mixtral-f32.gguf", "models/mixtral", "mixtral-adapter.gguf", "mixtral+adapter"),
        (&qwen35_adapter, "qwen35moe-f32.gguf", "gguf/qwen35moe", "qwen35moe-adapter.gguf", "qwen35moe+adapter"),
        (
            &qwen35_adapter,
            "qwen35moe-fused-f32.gguf",
            "gguf/qwen35moe",
            "qwen35moe-adapter-fused.gguf",
            "qwen35moe-fused+adapter-fused",
        ),
    ] {
        let theirs = l.logits(key);
        // lora's own run of the PEFT adapter on the folder is what llama.cpp ran with the export.
        close(key, &l.ours(&fixtures().join(folder), Some(adapter)), &theirs);
        let out = d.join(fixture);
        let o = lora(&["export", s(adapter), "--base", s(&gguf(base)), "-o", s(&out), "--type", "f32"]);
        assert!(o.status.success(), "{key}: {}", stderr(&o));
        assert!(std::fs::read(&out).unwrap() == std::fs::read(gguf(fixture)).unwrap(), "{key}: bytes");
        let g = GgufFile::open(&out).unwrap();
        let three_d = g.tensors.iter().filter(|t| t.dims.len() == 3).count();
        assert!(three_d >= 4, "{key}: {three_d} 3-D factors");
        // And back: the llama.cpp file on the GGUF base, in lora.
        close(&format!("{key} read back"), &l.ours(&gguf(base), Some(&out)), &theirs);
    }
    let g = GgufFile::open(gguf("qwen35moe-adapter-fused.gguf")).unwrap();
    assert!(g.tensor("blk.0.ffn_gate_up_exps.weight.lora_a").is_some());
    assert!(g.tensor("blk.0.ffn_gate_exps.weight.lora_a").is_none());
}

/// `lora merge MODEL.gguf ADAPTER` folds expert adapters into the experts read from the stacked
/// tensors, and `lora export` of the result runs in lora as llama.cpp ran base + adapter.
#[test]
fn moe_gguf_base_merges_and_exports() {
    let l = LlamaCpp::open();
    let d = temp_dir("gguf-moe-merge");
    let merged = d.join("merged");
    let o = lora(&[
        "merge",
        s(&gguf("qwen3moe-f32.gguf")),
        s(&gguf("qwen3moe-adapter")),
        "-o",
        s(&merged),
        "--dtype",
        "f32",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = d.join("merged.gguf");
    let o = lora(&["export", s(&merged), "-o", s(&out), "--type", "f32"]);
    assert!(o.status.success(), "{}", stderr(&o));
    close("merged", &l.ours(&out, None), &l.logits("qwen3moe+adapter"));
}

/// The Hub's form of a Qwen3.5-MoE checkpoint (`Qwen3_5MoeForConditionalGeneration`, the text model
/// under `model.language_model`, experts fused on disk as `mlp.experts.gate_up_proj [E, 2I, H]` and
/// `down_proj [E, H, I]`) exports to the converter's file of the per-expert text form, tensor for
/// tensor: the fused gate_up splits into each expert's gate and up rows.
#[test]
fn the_fused_hub_form_of_qwen35moe_exports_as_the_converter_writes_it() {
    use lora_core::io::safetensors_write::{StoredDtype, write_safetensors};
    let d = temp_dir("gguf-moe-hub-form");
    let text = fixtures().join("gguf/qwen35moe");
    let hub = d.join("hub");
    std::fs::create_dir_all(&hub).unwrap();
    let st = lora_formats::safetensors::SafetensorsFile::open(text.join("model.safetensors")).unwrap();
    let read = |n: &str| st.to_f32(n).unwrap().0;
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut fused_layers = std::collections::BTreeSet::new();
    for (n, info) in st.tensors() {
        match lora_formats::hf_config::expert_path(n) {
            Some(p) => {
                fused_layers.insert(p.layer.to_string());
            }
            None => tensors.push((n.replace("model.", "model.language_model."), info.shape.clone(), read(n))),
        }
    }
    for layer in &fused_layers {
        let experts =
            (0..).take_while(|e| st.info(&format!("{layer}.mlp.experts.{e}.down_proj.weight")).is_some()).count();
        let p = |e: usize, w: &str| read(&format!("{layer}.mlp.experts.{e}.{w}.weight"));
        let (i, h) = {
            let s = &st.info(&format!("{layer}.mlp.experts.0.gate_proj.weight")).unwrap().shape;
            (s[0], s[1])
        };
        let gate_up: Vec<f32> = (0..experts).flat_map(|e| [p(e, "gate_proj"), p(e, "up_proj")].concat()).collect();
        let down: Vec<f32> = (0..experts).flat_map(|e| p(e, "down_proj")).collect();
        let hub_layer = layer.replace("model.", "model.language_model.");
        tensors.push((format!("{hub_layer}.mlp.experts.gate_up_proj"), vec![experts, 2 * i, h], gate_up));
        tensors.push((format!("{hub_layer}.mlp.experts.down_proj"), vec![experts, h, i], down));
    }
    assert_eq!(fused_layers.len(), 4, "every layer of the fixture is sparse");
    write_safetensors(&hub.join("model.safetensors"), &tensors, StoredDtype::F32, &Default::default()).unwrap();
    let text_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(text.join("config.json")).unwrap()).unwrap();
    let config = serde_json::json!({
        "architectures": ["Qwen3_5MoeForConditionalGeneration"],
        "model_type": "qwen3_5_moe",
        "tie_word_embeddings": text_config["tie_word_embeddings"],
        "text_config": text_config,
    });
    std::fs::write(hub.join("config.json"), config.to_string()).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(text.join(f), hub.join(f)).unwrap();
    }
    let out = d.join("hub.gguf");
    let o = lora(&["export", s(&hub), "-o", s(&out), "--type", "f32"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (ours, theirs) = (GgufFile::open(&out).unwrap(), GgufFile::open(gguf("qwen35moe-f32.gguf")).unwrap());
    assert_eq!(ours.tensors.len(), theirs.tensors.len());
    assert!(assert_converter_tensors("hub form", &ours, &theirs) >= 12);
}
