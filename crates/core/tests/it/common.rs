//! Fixture paths and helpers.

use std::path::PathBuf;

use lora_formats::safetensors::SafetensorsFile;

/// The workspace root: `LORA_REPO` (a test binary carried to another machine by
/// scripts/gpu_check.sh), else the package folder `cargo test` runs this binary for (read at run time:
/// CI builds its own checkout into the same target folder, and cargo keeps a test binary whose sources
/// did not change, with the other checkout's path compiled in), else the one it was built in.
pub fn repo() -> PathBuf {
    std::env::var_os("LORA_REPO").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
            .join("../..")
    })
}

/// `tests/fixtures` at the workspace root.
pub fn fixtures() -> PathBuf {
    repo().join("tests/fixtures")
}

/// A model folder under `tests/fixtures/models`.
pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

/// A golden tensor as f32 values with its shape.
pub fn golden_f32(file: &SafetensorsFile, name: &str) -> (Vec<f32>, Vec<usize>) {
    file.to_f32(name).unwrap_or_else(|e| panic!("golden tensor {name}: {e}"))
}

/// A golden I64 tensor.
pub fn golden_i64(file: &SafetensorsFile, name: &str) -> (Vec<i64>, Vec<usize>) {
    let info = file.info(name).unwrap_or_else(|| panic!("golden tensor {name} missing"));
    let bytes = file.bytes(info);
    let v = bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
    (v, info.shape.clone())
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A fresh temporary folder.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lora-core-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The GPU device the GPU tests run on, named by `LORA_TEST_GPU` (`wgpu` or `cuda`); `None` when it
/// is unset, and those tests then return at once. Set, it must work: CI sets `LORA_TEST_GPU=wgpu`
/// over lavapipe, where a device that fails to come up is a failure, not a skip.
pub fn gpu_device() -> Option<burn::tensor::Device> {
    let name = std::env::var("LORA_TEST_GPU").ok().filter(|s| !s.is_empty())?;
    let backend: lora_core::Backend = name.parse().unwrap_or_else(|e| panic!("LORA_TEST_GPU={name}: {e}"));
    Some(backend.device().unwrap_or_else(|e| panic!("LORA_TEST_GPU={name}: {e}")))
}

/// `n` values in [−amp, amp) from a linear congruential generator: seeded test inputs.
pub fn lcg(seed: u64, n: usize, amp: f32) -> Vec<f32> {
    let mut s = seed.wrapping_add(0x9E37_79B9);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * amp
        })
        .collect()
}
