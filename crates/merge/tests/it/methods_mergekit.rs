//! Merges of the fixture models equal mergekit 0.1.5's outputs on the same configurations
//! (scripts/make_merge_fixtures.py).

use lora_merge::{MergeOptions, merge_models};

use crate::common::*;

/// Runs the fixture configuration `name` and returns the largest difference from mergekit's output
/// over all tensors.
fn diff_from_mergekit(name: &str) -> f32 {
    let fx = merge_fixtures();
    let dir = temp_dir(&format!("mk-{name}"));
    let text = std::fs::read_to_string(fx.join(format!("configs/{name}.toml"))).unwrap();
    let cfg = write_config(&dir, &text);
    let out = dir.join("out");
    merge_models(&cfg, &out, &MergeOptions::default()).unwrap();
    let ours = load_all(&out);
    let theirs = load_all(&fx.join(format!("expected/{name}.safetensors")));
    assert_eq!(ours.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>());
    let mut worst = 0f32;
    for (k, v) in &ours {
        let d = max_diff(v, &theirs[k]);
        if d > worst {
            worst = d;
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    worst
}

#[test]
fn linear_is_bit_exact() {
    assert_eq!(diff_from_mergekit("linear"), 0.0);
}

#[test]
fn task_arithmetic_is_bit_exact() {
    assert_eq!(diff_from_mergekit("task_arithmetic"), 0.0);
}

#[test]
fn ties_is_bit_exact() {
    // Same selection (no ties among random f32 magnitudes), same f32 operation order.
    assert_eq!(diff_from_mergekit("ties"), 0.0);
}

#[test]
fn breadcrumbs_match() {
    assert_eq!(diff_from_mergekit("breadcrumbs"), 0.0);
    assert_eq!(diff_from_mergekit("breadcrumbs_ties"), 0.0);
}

#[test]
fn slerp_matches() {
    // Angles and norms accumulate in f64 here and in f32 chunks in mergekit: agreement to a few ulps
    // of weights of magnitude ~0.5.
    let d = diff_from_mergekit("slerp");
    assert!(d < 1e-6, "slerp differs by {d}");
}

#[test]
fn model_stock_matches() {
    let d = diff_from_mergekit("model_stock");
    assert!(d < 1e-6, "model_stock differs by {d}");
}
