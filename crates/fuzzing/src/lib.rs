//! One function per kind of input lora reads, each taking arbitrary bytes and handing them to the
//! reader every command uses, through its public API, and saying whether the reader accepted them.
//! A reader may refuse the input (an `Err` is the expected answer to garbage); it must never panic,
//! hang, or allocate what the input merely claims.
//!
//! `fuzz/` drives these with libFuzzer (`scripts/fuzz.sh`); the CLI's test binary runs each seed
//! corpus (`fuzz/corpus/<target>/seed-*`) and every crash found so far (`fuzz/regressions/<target>/`)
//! through them as ordinary tests, checking that `seed-bad-*` inputs are refused and the other seeds
//! accepted.

use std::path::PathBuf;
use std::sync::OnceLock;

/// One reader's entry point: arbitrary bytes in, whether the reader accepted them out.
pub type Target = fn(&[u8]) -> bool;

/// The fuzz targets, by name: the names of `fuzz/fuzz_targets/*.rs` and of the corpus folders.
pub const TARGETS: &[(&str, Target)] = &[
    ("safetensors", safetensors),
    ("gguf", gguf),
    ("model_config", model_config),
    ("adapter_config", adapter_config),
    ("recipe", recipe),
    ("merge_config", merge_config),
    ("dataset_line", dataset_line),
    ("chat_template", chat_template),
];

/// A scratch folder of this process and thread (readers take paths: they memory-map files).
/// Created once per thread, not per input: the fuzz loop calls this for every execution.
fn scratch() -> PathBuf {
    thread_local! {
        static DIR: PathBuf = {
            let dir = std::env::temp_dir()
                .join(format!("lora-fuzz-{}-{:?}", std::process::id(), std::thread::current().id()));
            let _ = std::fs::create_dir_all(&dir);
            dir
        };
    }
    DIR.with(PathBuf::clone)
}

fn write(name: &str, data: &[u8]) -> PathBuf {
    let path = scratch().join(name);
    std::fs::write(&path, data).expect("scratch file");
    path
}

/// A `.safetensors` file: header validation, then every tensor's bytes, and f32 conversion of the
/// float ones.
pub fn safetensors(data: &[u8]) -> bool {
    let path = write("model.safetensors", data);
    let Ok(f) = lora_formats::safetensors::SafetensorsFile::open(&path) else { return false };
    f.tensors().iter().all(|(name, info)| {
        let _ = f.bytes(info).iter().map(|&b| b as u64).sum::<u64>();
        !info.dtype.is_float() || f.to_f32(name).is_ok()
    })
}

/// A `.gguf` file: header, metadata and tensor infos; every tensor dequantized; the model
/// configuration and the tokenizer built from its metadata.
pub fn gguf(data: &[u8]) -> bool {
    let path = write("model.gguf", data);
    let Ok(g) = lora_formats::gguf::GgufFile::open(&path) else { return false };
    let tensors = g.tensors.iter().filter(|t| g.to_f32(t).is_ok()).count();
    let _ = lora_core::io::gguf::model::config_json(&g);
    let _ = lora_core::Tokenizer::from_gguf(&g);
    tensors == g.tensors.len()
}

/// `config.json`: parsed and resolved as every command resolves it.
pub fn model_config(data: &[u8]) -> bool {
    let path = write("config.json", data);
    lora_core::ModelConfig::from_file(&path).is_ok()
}

/// `adapter_config.json`: the one reading, and the model's extra checks.
pub fn adapter_config(data: &[u8]) -> bool {
    let path = write("adapter_config.json", data);
    let Ok(c) = lora_formats::peft::AdapterConfig::load(&path) else { return false };
    let _ = c.scale_for("model.layers.0.self_attn.q_proj", c.r);
    c.check_loadable(&path).is_ok()
}

/// A training recipe, read and validated as `lora train` reads it (offline: a Hub id as base is
/// looked up in an empty cache, never fetched). Accepted: the recipe parses (its paths, relative to
/// a scratch folder, do not exist, so validation refuses every input after checking its values).
pub fn recipe(data: &[u8]) -> bool {
    static HUB: OnceLock<lora_hub::ResolveOptions> = OnceLock::new();
    let hub = HUB.get_or_init(|| {
        // Explicit settings, not the environment: an empty cache of our own, never the network.
        let cache = scratch().join("hub-cache");
        let config = lora_hub::HubConfig::new("https://huggingface.co", &cache, cache.join("token"), None, true)
            .expect("hub settings");
        lora_hub::ResolveOptions { hub: config, progress: lora_hub::no_progress() }
    });
    let path = write("recipe.toml", data);
    let _ = lora_train::Recipe::load_with(&path, &[], hub);
    let text = String::from_utf8_lossy(data).into_owned();
    lora_train::Recipe::parse(&lora_train::recipe::Source { name: "recipe.toml".into(), text }).is_ok()
}

/// A merge configuration file, as TOML (`merge.toml`) and as mergekit's YAML (`merge.yml`).
pub fn merge_config(data: &[u8]) -> bool {
    let accepted: Vec<bool> = ["merge.toml", "merge.yml"]
        .iter()
        .map(|name| lora_merge::MergeConfig::load(&write(name, data)).is_ok())
        .collect();
    accepted.contains(&true)
}

/// The quickstart model's tokenizer and chat template, loaded once.
fn quickstart() -> &'static (lora_core::Tokenizer, lora_train::data::chat_template::ChatTemplate) {
    static TOK: OnceLock<(lora_core::Tokenizer, lora_train::data::chat_template::ChatTemplate)> = OnceLock::new();
    TOK.get_or_init(|| {
        // The package folder at run time: a test binary of another checkout's build may run here.
        let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
        let dir = manifest.join("../../models/quickstart");
        let config = lora_core::ModelConfig::from_file(dir.join("config.json")).expect("quickstart config");
        let tok = lora_core::Tokenizer::load_dir(&dir, &config).expect("quickstart tokenizer");
        let source = tok.chat_template.clone().expect("quickstart chat template");
        let template =
            lora_train::data::chat_template::ChatTemplate::for_tokenizer(&source, &tok, 0).expect("template");
        (tok, template)
    })
}

/// A dataset file (JSON lines of any format: text, completion, alpaca, chat), tokenized and
/// rendered with the quickstart model's chat template, with and without packing.
pub fn dataset_line(data: &[u8]) -> bool {
    let (tok, template) = quickstart();
    let path = write("data.jsonl", data);
    let mut accepted = false;
    for (format, packing) in [("auto", false), ("chat", true)] {
        let opts = lora_train::data::DataOptions {
            format,
            max_seq_len: 64,
            overflow: lora_train::data::Overflow::Truncate,
            train_on_inputs: false,
            skip_invalid: packing,
            packing,
            template: Some(template),
            turns: lora_train::data::turns::TurnMode::Auto,
            reasoning_field: None,
            untrained_turns_are_errors: false,
            seed: 0,
        };
        let loaded = lora_train::data::load_examples(&[(path.clone(), 1.0)], &opts, tok);
        accepted |= format == "auto" && loaded.is_ok();
    }
    accepted
}

/// A chat template (Jinja, as in `tokenizer_config.json`), rendered over a fixed conversation with
/// a system turn and without (some templates refuse one), with and without the assistant spans the
/// trainer masks by. Accepted: either conversation renders.
pub fn chat_template(data: &[u8]) -> bool {
    let Ok(source) = std::str::from_utf8(data) else { return false };
    let Ok(t) = lora_train::data::chat_template::ChatTemplate::new(source, Some("<s>".into()), Some("</s>".into()), 0)
    else {
        return false;
    };
    let messages: Vec<serde_json::Value> = serde_json::from_str(
        r#"[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]"#,
    )
    .expect("messages");
    let _ = t.render_with_assistant_spans(&messages[..3]);
    let _ = t.render_with_assistant_spans(&messages[1..3]);
    t.render(&messages, true).is_ok() || t.render(&messages[1..], true).is_ok()
}
