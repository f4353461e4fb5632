//! `lora export` of Qwen3.5 (`qwen35`): a model folder written as llama.cpp's converter writes it
//! (compared with the converter's own files, `scripts/make_qwen35_gguf_fixtures.py`), an adapter
//! whose factors carry the value-head reorder of the weights they adapt, and the Ollama Modelfile.

use std::path::{Path, PathBuf};

use lora_formats::gguf::{GgufFile, Value};

use crate::common::*;

fn gguf(name: &str) -> PathBuf {
    fixtures().join("gguf").join(name)
}

/// The folder a fixture GGUF came from, as lora writes it back (text form, f32).
fn folder_of(file: &str, d: &Path) -> PathBuf {
    let dir = d.join(file.trim_end_matches(".gguf"));
    lora_core::io::gguf::to_folder::gguf_to_folder(&gguf(file), &dir).unwrap();
    dir
}

/// Tensors whose values the converter computed (`1 + w`, `−exp(A_log)`): a round trip through the
/// folder gives them back to within float rounding, not to the bit.
fn computed(name: &str) -> bool {
    (name.ends_with("norm.weight") && !name.ends_with("ssm_norm.weight")) || name.ends_with(".ssm_a")
}

/// `ours` holds the tensors of `theirs`, with the same dimensions, types and values: to the bit, or
/// within 2e-7 relative for the values the converter computes. Returns how many were compared.
fn assert_same_tensors(ours: &GgufFile, theirs: &GgufFile) -> usize {
    for t in &theirs.tensors {
        let o = ours.tensor(&t.name).unwrap_or_else(|| panic!("{} is missing", t.name));
        assert_eq!((&o.dims, o.type_id), (&t.dims, t.type_id), "{}: dims and type", t.name);
        let (a, b) = (ours.to_f32(o).unwrap(), theirs.to_f32(t).unwrap());
        if computed(&t.name) {
            let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs() / y.abs().max(1e-3)).fold(0.0, f32::max);
            assert!(worst <= 2e-7, "{}: off by {worst:e} relative", t.name);
        } else {
            assert!(a == b, "{}: values differ", t.name);
        }
    }
    assert_eq!(ours.tensors.len(), theirs.tensors.len(), "lora wrote tensors the converter did not");
    theirs.tensors.len()
}

/// Puts the multi-token-prediction block of `file` (block `layers`, which lora's reader leaves out)
/// back into `folder` under the Hub's `mtp.*` names, with the converter's `1 + w` undone.
fn add_mtp(file: &GgufFile, folder: &Path, layers: usize) {
    use lora_core::io::safetensors_write::{StoredDtype, write_safetensors};
    let path = folder.join("model.safetensors");
    let st = lora_formats::safetensors::SafetensorsFile::open(&path).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> =
        st.tensors().iter().map(|(n, info)| (n.clone(), info.shape.clone(), st.to_f32(n).unwrap().0)).collect();
    drop(st);
    let prefix = format!("blk.{layers}.");
    for t in file.tensors.iter().filter(|t| t.name.starts_with(&prefix)) {
        let rest = &t.name[prefix.len()..];
        let hf = match rest {
            "nextn.eh_proj.weight" => "mtp.fc.weight".to_string(),
            "nextn.enorm.weight" => "mtp.pre_fc_norm_embedding.weight".to_string(),
            "nextn.hnorm.weight" => "mtp.pre_fc_norm_hidden.weight".to_string(),
            "nextn.shared_head_norm.weight" => "mtp.norm.weight".to_string(),
            other => {
                let hf = lora_formats::gguf::qwen35::hf_name(&format!("blk.0.{other}")).unwrap();
                format!("mtp.layers.0.{}", hf.strip_prefix("model.layers.0.").unwrap())
            }
        };
        let mut v = file.to_f32(t).unwrap();
        if computed(&t.name) {
            v.iter_mut().for_each(|x| *x -= 1.0);
        }
        tensors.push((hf, t.shape(), v));
    }
    write_safetensors(&path, &tensors, StoredDtype::F32, &Default::default()).unwrap();
}

/// llama.cpp's converter wrote these files from Hugging Face folders; lora writes each back from the
/// folder it reads out of it, and gets the converter's file: every `qwen35.*` key, the vocabulary and
/// template, every tensor's name, dimensions, type and values (so the value-head reorder, the norms'
/// `1 + w`, `−exp(A_log)`, the squeezed F32 convolution and the multi-token-prediction block are the
/// converter's). The export checks itself, and the Modelfile carries Qwen3.5's chat format.
#[test]
fn a_qwen35_folder_exports_as_llama_cpps_converter_writes_it() {
    let d = temp_dir("qwen35-export");
    for (file, ty, mtp) in [
        ("qwen35-text.gguf", "f32", false),
        ("qwen35-text-f16.gguf", "f16", false),
        ("qwen35-hub-mtp.gguf", "f32", true),
    ] {
        let theirs = GgufFile::open(gguf(file)).unwrap();
        let folder = folder_of(file, &d);
        if mtp {
            add_mtp(&theirs, &folder, 3);
        }
        let out = d.join(format!("lora-{file}"));
        let o = lora(&["export", s(&folder), "-o", s(&out), "--type", ty]);
        assert!(o.status.success(), "{file}: {}", stderr(&o));
        assert!(stdout(&o).contains("qwen35 model") && stdout(&o).contains("greedy tokens agree"), "{}", stdout(&o));
        let ours = GgufFile::open(&out).unwrap();
        let n = assert_same_tensors(&ours, &theirs);
        assert!(n > 40, "{file}: only {n} tensors compared");
        let tokenizer = [
            "tokenizer.ggml.model",
            "tokenizer.ggml.pre",
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.chat_template",
        ];
        let compared = |g: &GgufFile| -> Vec<String> {
            let keys = g.metadata.iter().map(|(k, _)| k.clone());
            keys.filter(|k| k.starts_with("qwen35.") || tokenizer.contains(&k.as_str())).collect()
        };
        assert_eq!(compared(&ours), compared(&theirs), "{file}: keys and their order");
        for k in compared(&theirs) {
            assert_eq!(ours.get(&k), theirs.get(&k), "{file}: {k}");
        }
        assert_eq!(ours.get("qwen35.nextn_predict_layers").is_some(), mtp);
        assert_eq!(ours.get("general.file_type"), theirs.get("general.file_type"));
        let modelfile = std::fs::read_to_string(out.with_extension("Modelfile")).unwrap();
        assert!(
            modelfile.contains("TEMPLATE \"\"\"")
                && modelfile.contains("<think>")
                && modelfile.contains("PARAMETER stop \"<|im_end|>\""),
            "{modelfile}"
        );
    }
}

/// A Qwen3.5 adapter on the Gated DeltaNet's projections exports to a llama.cpp LoRA whose factors
/// are reordered as the weights are: the update `scale · B'A'` it gives `blk.0.attn_qkv` (and
/// `ssm_out`, `attn_gate`, `ssm_beta`) is the difference between the exported merged model and the
/// exported base, both written as llama.cpp's converter writes them. The adapter is trained on the
/// `qwen35` GGUF file itself, and equals the one trained on the folder read out of it. The export checks
/// itself against the PEFT adapter; a Qwen3.5 whose key and value heads differ in size is refused by
/// name.
#[test]
fn a_qwen35_adapter_exports_with_its_value_heads_reordered() {
    let d = temp_dir("qwen35-adapter");
    let base = folder_of("qwen35-text.gguf", &d);
    let run = d.join("run");
    let targets = r#"lora.targets=["in_proj_qkv","in_proj_z","in_proj_b","out_proj","q_proj"]"#;
    let train = |out: &Path, model: &Path| {
        let o = train_tiny(out, &[&format!("model.base=\"{}\"", model.display()), targets, "train.max_steps=3"]);
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read(out.join("adapter_model.safetensors")).unwrap()
    };
    let on_file = train(&run, &gguf("qwen35-text.gguf"));
    assert!(on_file == train(&d.join("run-on-folder"), &base), "training on the GGUF file and on its folder differ");
    let file = d.join("run.gguf");
    let o = lora(&["export", s(&run), "--base", s(&base), "-o", s(&file), "--type", "f32"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("greedy tokens agree"), "{}", stdout(&o));
    let modelfile = std::fs::read_to_string(d.join("run.Modelfile")).unwrap();
    assert!(modelfile.contains("\nADAPTER /") && modelfile.contains("PARAMETER stop \"<|im_end|>\""), "{modelfile}");

    // The merged model and the base, both exported; their difference is the adapter's update.
    let merged = d.join("merged");
    let o = lora(&["merge", s(&base), s(&run), "-o", s(&merged), "--dtype", "f32"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let export = |dir: &Path, name: &str| {
        let out = d.join(name);
        let o = lora(&["export", s(dir), "-o", s(&out), "--type", "f32", "--no-check"]);
        assert!(o.status.success(), "{}", stderr(&o));
        GgufFile::open(out).unwrap()
    };
    let (with, without) = (export(&merged, "merged.gguf"), export(&base, "base.gguf"));
    let adapter = GgufFile::open(&file).unwrap();
    let Some(Value::F32(alpha)) = adapter.get("adapter.lora.alpha") else { panic!("no alpha") };
    let mut checked = 0;
    for module in ["blk.0.attn_qkv", "blk.0.attn_gate", "blk.0.ssm_beta", "blk.0.ssm_out", "blk.1.attn_q"] {
        let (ta, tb) =
            (adapter.tensor(&format!("{module}.weight.lora_a")), adapter.tensor(&format!("{module}.weight.lora_b")));
        let (ta, tb) = (ta.unwrap_or_else(|| panic!("{module}: no lora_a")), tb.unwrap());
        let (a, b) = (adapter.to_f32(ta).unwrap(), adapter.to_f32(tb).unwrap());
        let (d_in, r, d_out) = (ta.dims[0] as usize, ta.dims[1] as usize, tb.dims[1] as usize);
        let scale = alpha / r as f32;
        let w = |g: &GgufFile| g.to_f32(g.tensor(&format!("{module}.weight")).unwrap()).unwrap();
        let (w1, w0) = (w(&with), w(&without));
        let mut worst = 0.0f32;
        for o in 0..d_out {
            for i in 0..d_in {
                let update: f32 = (0..r).map(|k| b[o * r + k] * a[k * d_in + i]).sum::<f32>() * scale;
                worst = worst.max((w1[o * d_in + i] - w0[o * d_in + i] - update).abs());
            }
        }
        let size = w1.iter().zip(&w0).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert!(size > 1e-4, "{module}: the adapter changed nothing ({size:e})");
        assert!(worst <= 1e-5 + 1e-3 * size, "{module}: B'A' is off the model's update by {worst:e} (update {size:e})");
        checked += 1;
    }
    assert_eq!(checked, 5);

    // Key and value heads of different sizes: llama.cpp's qwen35 cannot hold the model.
    let o = lora(&["export", s(&fixtures().join("models/qwen3_5")), "-o", s(&d.join("x.gguf"))]);
    assert_user_error(&o, "linear_value_head_dim");
    assert!(!d.join("x.gguf").exists());
}

/// The logits of `model` (with `adapter`, a PEFT folder or a llama.cpp adapter file) for the probe
/// rows of `scripts/make_qwen35_llama_cpp_fixtures.py`, each row on its own, flattened.
fn probe_logits(model: &Path, adapter: Option<&Path>, rows: &[Vec<u32>]) -> Vec<f32> {
    let device = lora_core::default_device();
    let mut m = lora_core::CausalLm::load_dir(model, &device).unwrap();
    if let Some(a) = adapter {
        lora_core::adapter::load_adapter(&mut m, a, 1.0, false).unwrap();
    }
    let mut out = Vec::new();
    for row in rows {
        let batch = lora_core::TokenBatch::rows(vec![row.clone()]);
        out.extend(lora_core::to_f32_vec(m.forward(&batch, None).unwrap()).unwrap());
    }
    out
}

/// llama.cpp 0.3.36 ran what lora writes (`scripts/make_qwen35_llama_cpp_fixtures.py`): the adapter
/// `lora export` writes for a Qwen3.5 (every projection the value-head reorder touches) applied by
/// llama.cpp to the converter's base gives lora's logits with the PEFT adapter; so does the merged
/// model `lora merge` + `lora export` write (f32; its bf16 and q8_0 files are the converter's of the
/// same folder), and llama.cpp's greedy continuation on it is lora's. lora still writes that adapter file byte for
/// byte, and reads llama.cpp's base as llama.cpp runs it.
#[test]
fn llama_cpp_runs_lora_s_qwen35_exports_as_lora_does() {
    let g = lora_formats::safetensors::SafetensorsFile::open(gguf("qwen35_llama_cpp.safetensors")).unwrap();
    let read = |name: &str| g.to_f32(name).unwrap().0;
    let ints = |name: &str| -> Vec<u32> {
        g.bytes(g.info(name).unwrap())
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect()
    };
    let ids = ints("input_ids");
    let rows: Vec<Vec<u32>> = ids.chunks(ids.len() / 2).map(<[u32]>::to_vec).collect();
    let base = gguf("qwen35-text.gguf");
    let adapter = gguf("qwen35-adapter");
    let close = |what: &str, ours: &[f32], theirs: &[f32]| {
        let d = max_abs_diff(ours, theirs);
        assert!(d <= 1e-4, "{what}: max |Δ| vs llama.cpp {d:e}");
    };
    close("base", &probe_logits(&base, None, &rows), &read("logits.base"));
    let with_adapter = probe_logits(&base, Some(&adapter), &rows);
    assert!(max_abs_diff(&with_adapter, &read("logits.base")) > 1e-2, "the adapter changes nothing");
    close("base + adapter", &with_adapter, &read("logits.adapter"));
    // A file with a multi-token-prediction block (as lora writes one): llama.cpp loads it and runs
    // the decoder as lora does.
    close("hub + MTP", &probe_logits(&gguf("qwen35-hub-mtp.gguf"), None, &rows), &read("logits.hub-mtp"));

    let d = temp_dir("qwen35-llama-cpp");
    let file = d.join("adapter.gguf");
    let o = lora(&["export", s(&adapter), "--base", s(&base), "-o", s(&file), "--type", "f32"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(&file).unwrap() == std::fs::read(gguf("qwen35-adapter.gguf")).unwrap());
    close("base + lora's GGUF adapter", &probe_logits(&base, Some(&file), &rows), &read("logits.adapter"));

    let merged = d.join("merged");
    let o = lora(&["merge", s(&base), s(&adapter), "-o", s(&merged), "--dtype", "f32"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let merged_gguf = d.join("merged.gguf");
    let o = lora(&["export", s(&merged), "-o", s(&merged_gguf), "--type", "f32"]);
    assert!(o.status.success(), "{}", stderr(&o));
    close("merged", &probe_logits(&merged_gguf, None, &rows), &read("logits.merged"));
    // bf16 and q8_0: the files are the converter's, from the same folder (llama.cpp's logits are
    // not the check for these: its CPU matmul rounds the activations to the weights' type, and 0.3.36
    // crashes on this q8_0 file, the converter's as lora's).
    for ty in ["bf16", "q8_0"] {
        let file = d.join(format!("merged-{ty}.gguf"));
        let o = lora(&["export", s(&merged), "-o", s(&file), "--type", ty, "--no-check"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let converter = GgufFile::open(gguf(&format!("qwen35-merged-{ty}.gguf"))).unwrap();
        assert!(assert_same_tensors(&GgufFile::open(&file).unwrap(), &converter) > 40, "{ty}");
    }
    // Greedy, one full forward per token.
    let device = lora_core::default_device();
    let m = lora_core::CausalLm::load_dir(&merged_gguf, &device).unwrap();
    let mut seq = rows[0].clone();
    let vocab = m.config.vocab_size;
    for _ in 0..8 {
        let logits =
            lora_core::to_f32_vec(m.forward(&lora_core::TokenBatch::rows(vec![seq.clone()]), None).unwrap()).unwrap();
        let last = &logits[logits.len() - vocab..];
        let best = (0..vocab).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap();
        seq.push(best as u32);
    }
    assert_eq!(&seq[rows[0].len()..], ints("greedy.merged").as_slice(), "greedy continuation");
}

/// The Hub's form of a Qwen3.5 checkpoint (`Qwen3_5ForConditionalGeneration`, the language model
/// under `model.language_model`) and an adapter trained on it, named so, export to the same llama.cpp
/// files as the text form: the adapter to the fixture's `qwen35-adapter.gguf` tensor for tensor, and
/// the model to what the text form gives.
#[test]
fn the_hub_form_exports_as_the_text_form() {
    use lora_core::io::safetensors_write::{StoredDtype, write_safetensors};
    let d = temp_dir("qwen35-hub-form");
    let text = folder_of("qwen35-text.gguf", &d);
    // The same model in the Hub's form.
    let hub = d.join("hub");
    std::fs::create_dir_all(&hub).unwrap();
    let st = lora_formats::safetensors::SafetensorsFile::open(text.join("model.safetensors")).unwrap();
    let renamed: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .tensors()
        .iter()
        .map(|(n, info)| {
            let hub_name = n.strip_prefix("model.").map_or(n.clone(), |r| format!("model.language_model.{r}"));
            (hub_name, info.shape.clone(), st.to_f32(n).unwrap().0)
        })
        .collect();
    write_safetensors(&hub.join("model.safetensors"), &renamed, StoredDtype::F32, &Default::default()).unwrap();
    let text_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(text.join("config.json")).unwrap()).unwrap();
    let config = serde_json::json!({
        "architectures": ["Qwen3_5ForConditionalGeneration"],
        "model_type": "qwen3_5",
        "tie_word_embeddings": text_config["tie_word_embeddings"],
        "text_config": text_config,
    });
    std::fs::write(hub.join("config.json"), config.to_string()).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(text.join(f), hub.join(f)).unwrap();
    }
    // The fixture adapter, renamed for the Hub's form.
    let adapter = d.join("hub-adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    let fixture = gguf("qwen35-adapter");
    std::fs::copy(fixture.join("adapter_config.json"), adapter.join("adapter_config.json")).unwrap();
    let st = lora_formats::safetensors::SafetensorsFile::open(fixture.join("adapter_model.safetensors")).unwrap();
    let renamed: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .tensors()
        .iter()
        .map(|(n, info)| {
            (n.replace(".model.layers.", ".model.language_model.layers."), info.shape.clone(), st.to_f32(n).unwrap().0)
        })
        .collect();
    assert!(renamed.iter().all(|(n, _, _)| n.contains(".language_model.layers.")));
    write_safetensors(&adapter.join("adapter_model.safetensors"), &renamed, StoredDtype::F32, &Default::default())
        .unwrap();

    let file = d.join("hub-adapter.gguf");
    let o = lora(&["export", s(&adapter), "--base", s(&hub), "-o", s(&file), "--type", "f32"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("greedy tokens agree"), "{}", stdout(&o));
    let fixture_gguf = GgufFile::open(gguf("qwen35-adapter.gguf")).unwrap();
    assert_eq!(assert_same_tensors(&GgufFile::open(&file).unwrap(), &fixture_gguf), 22);

    let export = |dir: &Path, name: &str| {
        let out = d.join(name);
        let o = lora(&["export", s(dir), "-o", s(&out), "--type", "f32"]);
        assert!(o.status.success(), "{}", stderr(&o));
        GgufFile::open(out).unwrap()
    };
    let (from_hub, from_text) = (export(&hub, "hub.gguf"), export(&text, "text.gguf"));
    assert!(assert_same_tensors(&from_hub, &from_text) > 40);
    assert_eq!(from_hub.get("qwen35.attention.recurrent_layers"), from_text.get("qwen35.attention.recurrent_layers"));
}
