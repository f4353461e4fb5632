//! Which files of a repository lora needs, and whether a snapshot folder has them all.
//!
//! Configuration, generation settings, tokenizer files and chat templates, and the weights in
//! safetensors only: a single file, or the index with exactly the shards it names. Pickled
//! weights (`*.bin`, `*.pt`, ...) are never fetched: loading them can run arbitrary code.

use std::path::Path;

/// What a reference is expected to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    /// A base or merged model: `config.json`, `tokenizer.json`, safetensors weights.
    Model,
    /// A PEFT adapter: `adapter_config.json`, `adapter_model.safetensors`.
    Adapter,
    /// Whichever of the two the repository turns out to be (`lora download`).
    Any,
}

/// Small files fetched when the repository has them.
const OPTIONAL: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "adapter_config.json",
    "README.md",
];

/// The sharded-weights index.
pub const INDEX: &str = "model.safetensors.index.json";

/// Weight files recognised as pickles, refused with a message.
fn is_pickle(f: &str) -> bool {
    [".bin", ".pt", ".pth", ".pkl", ".ckpt"].iter().any(|e| f.ends_with(e))
}

/// The files to fetch from a repository's listing (before reading a shard index), or the reason
/// the repository cannot be used.
pub fn select(listing: &[String], kind: RepoKind) -> Result<Vec<String>, String> {
    let has = |f: &str| listing.iter().any(|l| l == f);
    let mut wanted: Vec<String> = OPTIONAL.iter().filter(|f| has(f)).map(|f| f.to_string()).collect();
    let is_adapter = match kind {
        RepoKind::Adapter => true,
        RepoKind::Model => false,
        RepoKind::Any => has("adapter_config.json"),
    };
    if is_adapter {
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            if !has(f) {
                let pickles = if has("adapter_model.bin") {
                    " (it has adapter_model.bin: lora reads safetensors only)"
                } else {
                    ""
                };
                return Err(format!(
                    "no {f} in the repository; it is not a PEFT adapter in safetensors format{pickles}"
                ));
            }
        }
        wanted.push("adapter_model.safetensors".into());
    } else {
        if has(INDEX) {
            wanted.push(INDEX.into());
        } else if has("model.safetensors") {
            wanted.push("model.safetensors".into());
        } else {
            let pickles: Vec<&String> = listing.iter().filter(|f| !f.contains('/') && is_pickle(f)).collect();
            return Err(if pickles.is_empty() {
                "no model.safetensors or model.safetensors.index.json in the repository".into()
            } else {
                format!(
                    "only pickled weights ({}); lora reads safetensors only, which cannot run code when loaded",
                    pickles.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                )
            });
        }
        if !has("config.json") {
            return Err("no config.json in the repository".into());
        }
    }
    wanted.dedup();
    Ok(wanted)
}

/// The shard files a `model.safetensors.index.json` names, sorted and de-duplicated.
pub fn shards_of_index(index_json: &[u8]) -> Result<Vec<String>, String> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let index: Index = serde_json::from_slice(index_json).map_err(|e| format!("{INDEX}: {e}"))?;
    let mut shards: Vec<String> = index.weight_map.into_values().collect();
    shards.sort();
    shards.dedup();
    if let Some(bad) = shards.iter().find(|s| s.contains("..") || s.starts_with('/') || !s.ends_with(".safetensors")) {
        return Err(format!("{INDEX}: shard '{bad}' is not a safetensors file of the repository"));
    }
    Ok(shards)
}

/// The files missing from a snapshot folder for it to be usable as `kind` (empty when complete).
/// With `Any`, a folder with `adapter_config.json` is judged as an adapter, else as a model.
pub fn missing(snapshot: &Path, kind: RepoKind) -> Vec<String> {
    let exists = |f: &str| snapshot.join(f).is_file();
    let is_adapter = match kind {
        RepoKind::Adapter => true,
        RepoKind::Model => false,
        RepoKind::Any => exists("adapter_config.json"),
    };
    let mut missing = Vec::new();
    if is_adapter {
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            if !exists(f) {
                missing.push(f.to_string());
            }
        }
        return missing;
    }
    for f in ["config.json", "tokenizer.json"] {
        if !exists(f) {
            missing.push(f.to_string());
        }
    }
    if exists(INDEX) {
        match std::fs::read(snapshot.join(INDEX)).map_err(|e| e.to_string()).and_then(|b| shards_of_index(&b)) {
            Ok(shards) => missing.extend(shards.into_iter().filter(|s| !exists(s))),
            Err(_) => missing.push(format!("{INDEX} (unreadable)")),
        }
    } else if !exists("model.safetensors") {
        missing.push(format!("model.safetensors (or {INDEX} and its shards)"));
    }
    missing
}
