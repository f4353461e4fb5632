//! `lora --help/--version`, `inspect`, `generate` and `eval` on the fixtures, and their errors.

use std::path::Path;

use lora_core::{CausalLm, Tokenizer, default_device};
use serde_json::Value;

use crate::common::*;

fn copy_model(name: &str, to: &Path) {
    for e in std::fs::read_dir(fixtures().join("models").join(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn help_and_version() {
    let o = lora(&["--version"]);
    assert!(o.status.success());
    assert_eq!(stdout(&o).trim(), format!("lora {}", env!("CARGO_PKG_VERSION")));
    let o = lora(&["--help"]);
    assert!(o.status.success());
    for cmd in ["inspect", "generate", "eval"] {
        assert!(stdout(&o).contains(cmd), "{cmd} missing from --help");
    }
    let o = lora(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn inspect_model_folder_and_file() {
    let dir = fixtures().join("models/mistral");
    let o = lora(&["inspect", dir.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v["architecture"].as_str().unwrap().starts_with("MistralForCausalLM (2 layers"));
    // The declaration's line: the same facts README's table of architectures shows.
    assert_eq!(v["family"], "mistral: Mistral; blocks: attention, gated MLP (SwiGLU); GGUF: llama");
    // A hybrid model: its own class and the layer pattern.
    let o = lora(&["inspect", fixtures().join("models/qwen3_5-hub").to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let hub: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        hub["family"],
        "qwen3_5_text: Qwen3.5, Qwen3.6, Qwen3.8 (dense); blocks: gated deltanet + gated attention, gated MLP \
         (SwiGLU); GGUF: qwen35"
    );
    let arch = hub["architecture"].as_str().unwrap().to_string();
    assert!(
        arch.starts_with("Qwen3_5ForConditionalGeneration (3 layers")
            && arch.contains("; layers: 2× gated deltanet, gated attention; Gated DeltaNet 2/6 heads of 8/12, conv 3"),
        "{arch}"
    );
    assert_eq!(v["parameters"], 40_096);
    assert_eq!(v["files"].as_array().unwrap().len(), 4, "four shards");
    assert_eq!(v["tensors"].as_array().unwrap().len(), 21);
    assert_eq!(v["dtypes"]["F32"], 21);

    let file = fixtures().join("models/llama-bf16/model.safetensors");
    let o = lora(&["inspect", file.to_str().unwrap()]);
    assert!(o.status.success());
    let text = stdout(&o);
    assert!(text.contains("BF16 (51 tensors)"), "{text}");
    assert!(
        text.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
            == ["model.layers.2.self_attn.q_proj.weight", "[64,", "32]", "BF16"]),
        "{text}"
    );
}

#[test]
fn generate_greedy_equals_transformers() {
    let dir = fixtures().join("models/qwen3");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("golden/qwen3.json")).unwrap()).unwrap();
    let model = CausalLm::load_dir(&dir, &default_device()).unwrap();
    let tok = Tokenizer::load_dir(&dir, &model.config).unwrap();
    for g in meta["greedy"].as_array().unwrap() {
        let prompt = g["prompt"].as_str().unwrap();
        let ids: Vec<u32> = g["generated_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let expected = format!("{prompt}{}\n", tok.decode(&ids, true).unwrap());
        let o = lora(&["generate", "--model", dir.to_str().unwrap(), "--prompt", prompt, "--max-new-tokens", "12"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stdout(&o), expected);
    }
}

#[test]
fn eval_matches_transformers_loss() {
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("golden/llama.json")).unwrap()).unwrap();
    let d = temp_dir("eval");
    let data = d.join("eval.jsonl");
    // Windows line endings, a BOM and no final newline are all accepted.
    let lines: Vec<String> =
        meta["eval_texts"].as_array().unwrap().iter().map(|t| serde_json::json!({ "text": t }).to_string()).collect();
    std::fs::write(&data, format!("\u{feff}{}", lines.join("\r\n"))).unwrap();
    let dir = fixtures().join("models/llama");
    let o = lora(&["eval", "--model", dir.to_str().unwrap(), "--data", data.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let expected = meta["eval"]["mean_loss"].as_f64().unwrap();
    let got = v["mean_loss"].as_f64().unwrap();
    assert!((got - expected).abs() < 1e-4, "{got} vs {expected}");
    assert!((v["perplexity"].as_f64().unwrap() - expected.exp()).abs() < 1e-3);
    assert_eq!(v["predicted_tokens"], meta["eval"]["predicted_tokens"]);

    std::fs::write(&data, "{\"text\": \"ok\"}\n{\"txt\": \"typo\"}\n").unwrap();
    let o = lora(&["eval", "--model", dir.to_str().unwrap(), "--data", data.to_str().unwrap()]);
    assert_user_error(&o, "eval.jsonl:2: expected an object with a string field \"text\"");
    std::fs::write(&data, "{\"text\": \"ok\"}\nnot json\n").unwrap();
    let o = lora(&["eval", "--model", dir.to_str().unwrap(), "--data", data.to_str().unwrap()]);
    assert_user_error(&o, "eval.jsonl:2: not valid JSON");
}

#[test]
fn bad_inputs_exit_2_with_one_message() {
    let o = lora(&["generate", "--model", "/nonexistent/model", "--prompt", "hi"]);
    assert_user_error(&o, "/nonexistent/model: no such folder");
    let o = lora(&["inspect", "/nonexistent/file.safetensors"]);
    assert_user_error(&o, "no such file or folder");

    // Truncated weights.
    let d = temp_dir("corrupt");
    copy_model("llama", &d);
    let f = d.join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let o = lora(&["generate", "--model", d.to_str().unwrap(), "--prompt", "hi"]);
    assert_user_error(&o, "model.safetensors: not a valid safetensors file");
    let o = lora(&["inspect", f.to_str().unwrap()]);
    assert_user_error(&o, "truncated");

    // Header offsets beyond the file: declare a huge header length.
    let mut lying = bytes.clone();
    lying[..8].copy_from_slice(&(bytes.len() as u64 * 4).to_le_bytes());
    std::fs::write(&f, &lying).unwrap();
    let o = lora(&["inspect", f.to_str().unwrap()]);
    assert_user_error(&o, "after the length (truncated or corrupt)");

    // Unknown architecture.
    let d = temp_dir("arch");
    copy_model("qwen3", &d);
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap().replace("Qwen3ForCausalLM", "FalconForCausalLM");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    let o = lora(&["generate", "--model", d.to_str().unwrap(), "--prompt", "hi"]);
    assert_user_error(&o, "unsupported architecture 'FalconForCausalLM'");

    // Impossible sampling settings and unavailable devices.
    let m = fixtures().join("models/llama");
    let o =
        lora(&["generate", "--model", m.to_str().unwrap(), "--prompt", "hi", "--top-p", "1.5", "--temperature", "1"]);
    assert_user_error(&o, "top_p must be in (0, 1]");
    if !cfg!(feature = "cuda") {
        let o = lora(&["generate", "--model", m.to_str().unwrap(), "--prompt", "hi", "--device", "cuda"]);
        assert_user_error(&o, "without CUDA support");
    }
}

#[test]
fn inspect_understands_adapters() {
    let dir = fixtures().join("lora/adapter-rslora");
    let o = lora(&["inspect", dir.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["kind"], "peft-lora-adapter");
    assert_eq!(v["r"], 2);
    assert_eq!(v["use_rslora"], true);
    // all seven linears in layers 0 and 2
    assert_eq!(v["modules"], 14);
    // scaling alpha / sqrt(r) = 4 / sqrt(2)
    assert!((v["scaling"].as_f64().unwrap() - 4.0 / 2f64.sqrt()).abs() < 1e-12);
    let o = lora(&["inspect", fixtures().join("lora/adapter-qv").to_str().unwrap()]);
    let text = stdout(&o);
    assert!(text.contains("r = 4, alpha = 8, scaling 2") && text.contains("(9 modules)"), "{text}");
}

/// `lora --help` names every command with the help its own file gives, and says what each takes.
#[test]
fn help_lists_every_command_truthfully() {
    let out = lora(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let first = help.lines().next().unwrap();
    assert!(first.starts_with("LoRA fine-tuning and adapter merging"), "{first}");
    for command in [
        "inspect",
        "generate",
        "eval",
        "merge",
        "merge-adapters",
        "extract",
        "export",
        "quantize",
        "train",
        "verify",
        "download",
        "publish",
    ] {
        let line = help.lines().find(|l| l.trim_start().starts_with(&format!("{command} "))).unwrap_or_else(|| {
            panic!("`lora --help` does not list {command}:\n{help}");
        });
        // The same one-line help as `lora COMMAND --help` opens with: one place per command.
        let own = lora(&[command, "--help"]);
        let own = String::from_utf8(own.stdout).unwrap();
        let about = own.lines().next().unwrap().trim_end_matches('.');
        assert!(line.contains(about.trim()), "{command}: `{line}` vs `{about}`");
    }
    let eval = help.lines().find(|l| l.trim_start().starts_with("eval ")).unwrap();
    assert!(eval.contains("chat") && eval.contains("alpaca"), "eval takes every data format: {eval}");
    let export = help.lines().find(|l| l.trim_start().starts_with("export ")).unwrap();
    assert!(export.contains("whole model"), "export also writes whole models: {export}");
}

/// `lora inspect ADAPTER --base MODEL`: the checkpoint form the adapter names, and whether the base
/// has every module it adapts.
#[test]
fn inspect_an_adapter_against_a_base() {
    let adapter = fixtures().join("golden/qwen3_5-hub-adapter");
    let run = |base: &str| -> Value {
        let o =
            lora(&["inspect", adapter.to_str().unwrap(), "--base", fixtures().join(base).to_str().unwrap(), "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str(&stdout(&o)).unwrap()
    };
    let v = run("models/qwen3_5-hub");
    assert_eq!(v["layout"], "Hub form (model.language_model.layers.N…)");
    assert!(v["covers_base"].as_str().unwrap().contains("every module exists as named"), "{v}");
    let v = run("models/llama");
    let covers = v["covers_base"].as_str().unwrap();
    assert!(covers.starts_with("does not cover") && covers.contains("14 of 14"), "{covers}");
}

/// A 4-bit checkpoint: inspect names the quantization and which 4-bit weights lie in parts lora
/// carries but never runs (transformers' 4-bit save quantizes a vision tower too).
#[test]
fn inspect_says_what_a_four_bit_checkpoint_holds() {
    let o = lora(&["inspect", fixtures().join("models/qwen3_5-hub-bnb4").to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v["architecture"].as_str().unwrap().contains("bitsandbytes 4-bit NF4, double-quantized scales"), "{v}");
    assert_eq!(v["four_bit"], "29 weights in NF4, 6 of them in parts lora carries but never runs (model.visual)");
    let o = lora(&["inspect", fixtures().join("models/llama").to_str().unwrap(), "--json"]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v["four_bit"].is_null());
}
