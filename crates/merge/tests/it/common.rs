//! Fixture paths, temporary folders, and reading whole tensors for comparisons.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lora_merge::ModelDir;
use lora_merge::dtype::decode_f32;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn merge_fixtures() -> PathBuf {
    fixtures().join("merge")
}

/// A fresh empty folder unique to this test.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lora-merge-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every float tensor of a model folder or safetensors file, as f32.
pub fn load_all(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let m = ModelDir::open(path).unwrap();
    m.names()
        .map(|n| {
            let t = m.get(n).unwrap();
            let mut v = vec![0f32; t.info.numel()];
            decode_f32(t.bytes(), t.info.dtype, &mut v);
            (n.to_string(), v)
        })
        .collect()
}

/// Largest |a − b| over all elements.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Writes a merge configuration into `dir` with model paths pointing at the merge fixtures.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let fx = merge_fixtures();
    let mut text = text.to_string();
    for m in ["base", "ft1", "ft2", "ft3"] {
        text = text.replace(&format!("\"{m}\""), &format!("\"{}\"", fx.join(m).display()));
    }
    let p = dir.join("merge.toml");
    std::fs::write(&p, text).unwrap();
    p
}
