//! GGUF on the command line: inspect, generate, eval and train on a `.gguf` model as on its folder,
//! and `lora export` of an adapter for llama.cpp.

use lora_core::io::random_model::{LlamaShape, write_random_llama};

use crate::common::*;

fn gguf(name: &str) -> std::path::PathBuf {
    fixtures().join("gguf").join(name)
}

/// A random Llama folder of `shape` with the 512-piece SentencePiece tokenizer's `tokenizer.json`
/// and `tokenizer_config.json` (no `tokenizer.model`, as Mistral folders ship).
fn random_llama_with_spm_tokenizer(dir: &std::path::Path, shape: &LlamaShape) {
    write_random_llama(dir, shape, "f32").unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(gguf("vocab/spm-tiny").join(f), dir.join(f)).unwrap();
    }
}

#[test]
fn inspect_generate_and_eval_on_a_gguf_model_as_on_its_folder() {
    let file = gguf("llama-f32.gguf");
    let o = lora(&["inspect", s(&file)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("GGUF v3") && text.contains("LlamaForCausalLM (3 layers, hidden 32"), "{text}");
    assert!(text.contains("tokenizer.ggml.model = \"gpt2\"") && text.contains("rope_freqs.weight"), "{text}");

    let folder = fixtures().join("models/llama");
    let run = |model: &std::path::Path| {
        let o = lora(&["generate", "--model", s(model), "--prompt", "In the beginning", "--max-new-tokens", "10"]);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    assert_eq!(run(&file), run(&folder), "greedy generation differs between the GGUF file and its folder");

    let d = temp_dir("gguf-eval");
    let data = d.join("eval.jsonl");
    std::fs::write(&data, "{\"text\": \"And God said, Let there be light.\"}\n{\"text\": \"unicode é 🦙\"}\n").unwrap();
    let eval = |model: &std::path::Path| -> f64 {
        let o = lora(&["eval", "--model", s(model), "--data", s(&data), "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap()["mean_loss"].as_f64().unwrap()
    };
    let (a, b) = (eval(&file), eval(&folder));
    assert!((a - b).abs() < 1e-4, "eval loss {a} (GGUF) vs {b} (folder)");
}

#[test]
fn train_on_a_gguf_base_and_export_the_adapter_for_llama_cpp() {
    let d = temp_dir("gguf-train");
    let out = d.join("run");
    let o = train_tiny(&out, &[&format!("model.base=\"{}\"", gguf("llama-f32.gguf").display())]);
    assert!(o.status.success(), "{}", stderr(&o));
    let manifest = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    assert!(manifest.contains("llama-f32.gguf"), "{manifest}");

    let file = d.join("run.gguf");
    let o = lora(&["export", s(&out), "--base", s(&fixtures().join("models/llama")), "-o", s(&file)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("6 modules as F16") && text.contains("greedy tokens agree"), "{text}");
    let modelfile = std::fs::read_to_string(d.join("run.Modelfile")).unwrap();
    assert!(
        modelfile.contains("\nFROM /") && modelfile.contains("\nADAPTER /") && modelfile.contains("run.gguf"),
        "{modelfile}"
    );
    // The exported file applies as the folder does.
    let continuation = |adapter: &std::path::Path| {
        let o = lora(&[
            "generate",
            "--model",
            s(&fixtures().join("models/llama")),
            "--adapter",
            s(adapter),
            "--prompt",
            "In the beginning",
            "--max-new-tokens",
            "8",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    assert_eq!(continuation(&file), continuation(&out));
    let o = lora(&["inspect", s(&file)]);
    assert!(stdout(&o).contains("a LoRA adapter") && stdout(&o).contains("adapter.lora.alpha = 8"), "{}", stdout(&o));
    let o = lora(&["export", s(&out), "--base", s(&gguf("llama-f32.gguf")), "-o", s(&file)]);
    assert_user_error(&o, "pass --force");
    let o =
        lora(&["export", s(&out), "--base", s(&gguf("llama-f32.gguf")), "-o", s(&file), "--force", "--type", "q8_0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = lora(&["export", s(&out), "--base", s(&d), "-o", s(&d.join("x.gguf"))]);
    assert_user_error(&o, "config.json");
    assert!(!d.join("x.gguf").exists() && !d.join(".x.gguf.partial").exists());
}

#[test]
fn export_a_model_folder_to_gguf_and_run_it() {
    let d = temp_dir("gguf-model");
    let folder = fixtures().join("models/qwen2");
    let file = d.join("qwen2.gguf");
    let o = lora(&["export", s(&folder), "-o", s(&file), "--type", "f32"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("qwen2 model") && text.contains("greedy tokens agree"), "{text}");
    assert!(std::fs::read_to_string(d.join("qwen2.Modelfile")).unwrap().contains("FROM /"));
    let run = |model: &std::path::Path| {
        let o = lora(&["generate", "--model", s(model), "--prompt", "In the beginning", "--max-new-tokens", "8"]);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    assert_eq!(run(&file), run(&folder));
    let o = lora(&["export", s(&folder), "-o", s(&file)]);
    assert_user_error(&o, "--force");
}

/// A Mistral/Llama-2-style folder (SentencePiece BPE in tokenizer.json, no tokenizer.model) exports
/// to a GGUF whose vocabulary is what llama.cpp's converter writes from the SentencePiece model
/// itself (tokens, scores, types), so llama.cpp splits text as it does for that file
/// (scripts/make_spm_tokenizer_fixtures.py), and the export checks itself.
#[test]
fn export_a_sentencepiece_folder_to_gguf() {
    use lora_merge::gguf::{GgufFile, Value};
    let d = temp_dir("gguf-spm");
    let model = d.join("spm-model");
    let shape = LlamaShape { hidden: 32, layers: 1, heads: 4, kv_heads: 2, inter: 64, vocab: 512, tied: false };
    random_llama_with_spm_tokenizer(&model, &shape);
    let vocab = gguf("vocab");
    let file = d.join("spm.gguf");
    let o = lora(&["export", s(&model), "-o", s(&file), "--type", "f32"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("greedy tokens agree"), "{}", stdout(&o));
    let (ours, theirs) = (GgufFile::open(&file).unwrap(), GgufFile::open(vocab.join("spm-tiny.gguf")).unwrap());
    for key in
        ["model", "tokens", "scores", "token_type", "bos_token_id", "eos_token_id", "unknown_token_id", "add_bos_token"]
    {
        let key = format!("tokenizer.ggml.{key}");
        assert!(
            ours.get(&key) == theirs.get(&key),
            "{key}: {:.200?} against {:.200?}",
            ours.get(&key),
            theirs.get(&key)
        );
    }
    assert_eq!(ours.get("tokenizer.ggml.add_space_prefix"), Some(&Value::Bool(true)));
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(vocab.join("spm.json")).unwrap()).unwrap();
    let tok = lora_core::Tokenizer::from_gguf(&ours).unwrap();
    for (i, text) in golden["texts"].as_array().unwrap().iter().enumerate() {
        let want: Vec<u32> = serde_json::from_value(golden["spm-tiny"]["bos_special"][i].clone()).unwrap();
        assert_eq!(tok.encode(text.as_str().unwrap(), true).unwrap(), want, "{text}");
    }
}

/// A GGUF base merges as the folder it came from: the folded weights are the same.
#[test]
fn merge_into_a_gguf_base_equals_merging_into_its_folder() {
    let d = temp_dir("gguf-merge");
    let run = d.join("run");
    let folder = fixtures().join("models/qwen2");
    let o = train_tiny(&run, &[&format!("model.base=\"{}\"", folder.display())]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (d.join("from-gguf"), d.join("from-folder"));
    let o = lora(&["merge", s(&gguf("qwen2-f32.gguf")), s(&run), "-o", s(&a)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!d.join(".from-gguf.gguf-base").exists(), "the temporary folder stays behind");
    let o = lora(&["merge", s(&folder), s(&run), "-o", s(&b), "--dtype", "f32"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (ma, mb) = (lora_merge::ModelDir::open(&a).unwrap(), lora_merge::ModelDir::open(&b).unwrap());
    let names: Vec<&str> = mb.names().collect();
    assert_eq!(ma.names().collect::<Vec<_>>(), names);
    for n in names {
        let (ta, tb) = (ma.get(n).unwrap(), mb.get(n).unwrap());
        let decode = |t: &lora_merge::model_dir::TensorRef<'_>| {
            let mut v = vec![0f32; t.info.numel()];
            lora_merge::dtype::decode_f32(t.bytes(), t.info.dtype, &mut v);
            v
        };
        let (va, vb) = (decode(&ta), decode(&tb));
        let diff = max_abs_diff(&va, &vb);
        assert!(diff <= 1e-6, "{n}: {diff}");
    }
    // The merged folder runs.
    let o = lora(&["generate", "--model", s(&a), "--prompt", "In the beginning", "--max-new-tokens", "4"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `kill -9` of `lora export` at moments spread over the export of a ~100 MB model (writing, then
/// the self-check): OUT never exists after a kill (the file is written and checked under a hidden
/// name, and only then renamed), and the next export completes and leaves nothing else behind.
#[test]
fn kill_9_during_an_export_never_leaves_out() {
    let d = temp_dir("kill9-export");
    let model = d.join("model");
    // The tiny tokenizer has 512 pieces; the model's vocabulary is larger, as padded vocabularies are.
    let shape = LlamaShape { hidden: 512, layers: 8, heads: 8, kv_heads: 8, inter: 1536, vocab: 8192, tied: false };
    random_llama_with_spm_tokenizer(&model, &shape);
    let out = d.join("out.gguf");
    let args = ["export", s(&model), "-o", s(&out), "--type", "f16"];
    let killed = kill_at_fractions(&args, &out, &|o| lora_merge::gguf::GgufFile::open(o).is_ok());
    assert!(killed >= 3, "only {killed} kills landed during the export");
    assert!(lora(&args).status.success(), "the export after the kills");
    assert!(lora_merge::gguf::GgufFile::open(&out).is_ok());
    let left: Vec<String> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "left beside the output: {left:?}");
    std::fs::remove_dir_all(&d).unwrap();
}
