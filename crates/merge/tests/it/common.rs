//! Fixture paths, temporary folders, and reading whole tensors for comparisons.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lora_merge::ModelDir;
use lora_merge::dtype::decode_f32;

/// `tests/fixtures` at the workspace root of the package folder `cargo test` runs this binary for
/// (read at run time: CI builds its own checkout into the same target folder, and cargo keeps a test
/// binary whose sources did not change, with the other checkout's path compiled in).
pub fn fixtures() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../../tests/fixtures")
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

/// Writes a safetensors file of f32 tensors by hand (the format, not our writer, so corrupt variants
/// can be made from it).
pub fn write_f32_safetensors(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let (header, data) = f32_safetensors_parts(tensors);
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&data);
    std::fs::write(path, bytes).unwrap();
}

/// The JSON header and the data section of a safetensors file of f32 tensors.
pub fn f32_safetensors_parts(tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> (String, Vec<u8>) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        let begin = data.len();
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(
            name.to_string(),
            serde_json::json!({ "dtype": "F32", "shape": shape, "data_offsets": [begin, data.len()] }),
        );
    }
    (serde_json::Value::Object(header).to_string(), data)
}

/// A copy of fixture model `name` in `dir`, with its tensors passed through `edit` first.
pub fn edited_copy(name: &str, dir: &Path, edit: impl Fn(&mut BTreeMap<String, Vec<f32>>)) -> PathBuf {
    let src = merge_fixtures().join(name);
    let dst = dir.join(format!("{name}-edited"));
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
    let m = ModelDir::open(&src).unwrap();
    let shapes: BTreeMap<String, Vec<usize>> =
        m.names().map(|n| (n.to_string(), m.get(n).unwrap().info.shape.clone())).collect();
    let mut all = load_all(&src);
    edit(&mut all);
    let list: Vec<(&str, Vec<usize>, Vec<f32>)> = all
        .iter()
        .map(|(k, v)| {
            let shape =
                shapes.get(k).cloned().filter(|s| s.iter().product::<usize>() == v.len()).unwrap_or(vec![v.len()]);
            (k.as_str(), shape, v.clone())
        })
        .collect();
    write_f32_safetensors(&dst.join("model.safetensors"), &list);
    dst
}
