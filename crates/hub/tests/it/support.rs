//! Shared helpers: temporary folders, a configuration pointing at a fake Hub, sample repos.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lora_hub::{HubConfig, RetryPolicy, Token};

pub const TOKEN: &str = "hf_TestTokenThatMustNeverLeak0123456789";

/// A fresh, empty temporary folder.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "lora-hub-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A configuration for `endpoint` with a cache in `dir`, the test token, and fast retries.
pub fn config(endpoint: &str, dir: &Path, token: Option<&str>) -> HubConfig {
    let mut c =
        HubConfig::new(endpoint, dir.join("hub"), dir.join("token"), token.and_then(Token::new), false).unwrap();
    c.retry = RetryPolicy { attempts: 3, base_delay: Duration::from_millis(5), max_delay: Duration::from_millis(20) };
    c
}

/// Bytes that look like a safetensors file (binary, with NULs), distinct per `seed`.
pub fn weights(seed: u8, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    for (i, b) in v.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seed) & if i % 7 == 0 { 0 } else { 0xff };
    }
    v
}

/// A small model repository: config, tokenizer, generation config, two shards and their index,
/// plus files lora must not fetch (a pickle, a sub-folder, a consolidated file).
pub fn model_files() -> Vec<(&'static str, Vec<u8>)> {
    let index = br#"{"metadata":{"total_size":3000},"weight_map":{"a.weight":"model-00001-of-00002.safetensors","b.weight":"model-00002-of-00002.safetensors","c.weight":"model-00002-of-00002.safetensors"}}"#;
    vec![
        ("config.json", br#"{"model_type":"llama"}"#.to_vec()),
        ("generation_config.json", br#"{"do_sample":false}"#.to_vec()),
        ("tokenizer.json", br#"{"version":"1.0"}"#.to_vec()),
        ("tokenizer_config.json", br#"{"chat_template":"{{ x }}"}"#.to_vec()),
        ("model.safetensors.index.json", index.to_vec()),
        ("model-00001-of-00002.safetensors", weights(1, 1000)),
        ("model-00002-of-00002.safetensors", weights(2, 2000)),
        ("pytorch_model.bin", weights(3, 100)),
        ("consolidated.safetensors", weights(4, 100)),
        ("original/params.json", b"{}".to_vec()),
    ]
}

/// Seeds `repo` on `hub` with `files`.
pub fn seed(hub: &lora_hub::fake_hub::FakeHub, repo: &str, private: bool, files: &[(&str, Vec<u8>)]) -> String {
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(p, b)| (*p, b.as_slice())).collect();
    hub.seed(repo, private, &refs)
}

/// An adapter folder: config, weights, a model card without front matter, a run record, and a
/// checkpoint sub-folder that must not be published.
pub fn adapter_dir(dir: &Path) -> PathBuf {
    let a = dir.join("adapter");
    std::fs::create_dir_all(a.join("checkpoints/step-1")).unwrap();
    std::fs::write(
        a.join("adapter_config.json"),
        br#"{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["q_proj"],"base_model_name_or_path":"tiny-org/tiny-llama"}"#,
    )
    .unwrap();
    std::fs::write(a.join("adapter_model.safetensors"), weights(9, 4096)).unwrap();
    std::fs::write(a.join("README.md"), "# My adapter\n\nTrained on tiny text.\n").unwrap();
    std::fs::write(a.join("metrics.jsonl"), "{\"step\":1,\"loss\":2.5}\n").unwrap();
    std::fs::write(a.join("checkpoints/step-1/optimizer.safetensors"), weights(5, 64)).unwrap();
    a
}

/// Every file under `dir`, recursively (symlinks followed), with its bytes.
pub fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(all_files(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p, b));
        }
    }
    out
}
