//! Fixture paths.

use std::path::PathBuf;

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

/// A fresh temporary folder.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lora-train-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The GPU device the GPU tests run on, named by `LORA_TEST_GPU` (`wgpu` or `cuda`); `None` when it
/// is unset, and those tests then return at once. Set, it must work (CI sets it over lavapipe).
pub fn gpu_device() -> Option<lora_core::burn::tensor::Device> {
    let name = std::env::var("LORA_TEST_GPU").ok().filter(|s| !s.is_empty())?;
    let backend: lora_core::Backend = name.parse().unwrap_or_else(|e| panic!("LORA_TEST_GPU={name}: {e}"));
    Some(backend.device().unwrap_or_else(|e| panic!("LORA_TEST_GPU={name}: {e}")))
}
