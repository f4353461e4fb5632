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

/// Published mergekit recipes are YAML, most slerp ones in the `slices:` form, with empty
/// `parameters:` entries and mergekit-only flags such as `int8_mask`: written that way, the
/// fixture configurations give the TOML's outputs bit for bit (so mergekit's, to the tolerances
/// above), and the YAML is kept beside them.
#[test]
fn mergekit_yaml_recipes_give_mergekits_outputs() {
    let fx = merge_fixtures();
    let m = |name: &str| fx.join(name).display().to_string();
    let slerp = format!(
        "slices:\n  - sources:\n      - model: {base}\n        layer_range: [0, 2]\n      - model: {ft1}\n        layer_range: [0, 2]\n\
         merge_method: slerp\nbase_model: {base}\nparameters:\n  t:\n    - filter: self_attn\n      value: [0, 0.5, 1]\n    - value: 0.3\n\
         dtype: float32\n",
        base = m("base"),
        ft1 = m("ft1")
    );
    let ties = format!(
        "models:\n  - model: {base}\n    # no parameters necessary for base model\n  - model: {ft1}\n    parameters:\n      weight: 0.6\n      density: 0.5\n\
         \x20 - model: {ft2}\n    parameters:\n      weight:\n        - filter: mlp\n          value: 0.3\n        - value: 0.9\n      density: [0.3, 0.8]\n\
         \x20 - model: {ft3}\n    parameters:\n      weight: 0.5\n      density: 0.7\n\
         merge_method: ties\nbase_model: {base}\nparameters:\n  int8_mask: true\n  normalize: true\ndtype: float32\n",
        base = m("base"),
        ft1 = m("ft1"),
        ft2 = m("ft2"),
        ft3 = m("ft3")
    );
    for (name, text, tol) in [("slerp", slerp, 1e-6), ("ties", ties, 0.0)] {
        let dir = temp_dir(&format!("yaml-{name}"));
        let cfg = dir.join("merge.yml");
        std::fs::write(&cfg, &text).unwrap();
        let out = dir.join("out");
        merge_models(&cfg, &out, &MergeOptions::default()).unwrap();
        let toml = write_config(&dir, &std::fs::read_to_string(fx.join(format!("configs/{name}.toml"))).unwrap());
        merge_models(&toml, &dir.join("out-toml"), &MergeOptions::default()).unwrap();
        let ours = load_all(&out);
        let from_toml = load_all(&dir.join("out-toml"));
        let theirs = load_all(&fx.join(format!("expected/{name}.safetensors")));
        assert_eq!(ours.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>());
        for (k, v) in &ours {
            assert_eq!(v, &from_toml[k], "{name}: {k} differs from the TOML merge");
            assert!(max_diff(v, &theirs[k]) <= tol, "{name}: {k} differs from mergekit's");
        }
        assert_eq!(std::fs::read_to_string(out.join("mergekit_config.yml")).unwrap(), text);
        assert!(std::fs::read_to_string(out.join("README.md")).unwrap().contains("```yaml\n"));
        assert!(!out.join("merge.toml").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// YAML errors are located like TOML's; unknown keys are named; slices lora cannot merge are
/// refused by name before anything is written.
#[test]
fn mergekit_yaml_errors_name_the_line_key_or_slice() {
    let fx = merge_fixtures();
    let dir = temp_dir("yaml-errors");
    let base = fx.join("base").display().to_string();
    let ft1 = fx.join("ft1").display().to_string();
    let cases = [
        (
            format!("merge_method: linear\nmodels:\n  - model: {base}\n    weigth: 1.0\n"),
            "4:5: models[0]: unknown field `weigth`",
        ),
        (
            format!("merge_method: linear\nmodels: [\n"),
            "merge.yml:3:1: did not find expected node content, while parsing a flow node",
        ),
        (
            format!(
                "merge_method: slerp\nbase_model: {base}\nparameters: {{t: 0.5}}\nslices:\n  - sources:\n      - {{model: {base}, layer_range: [0, 1]}}\n      - {{model: {ft1}, layer_range: [0, 1]}}\n  - sources:\n      - {{model: {base}, layer_range: [1, 2]}}\n      - {{model: {ft1}, layer_range: [1, 2]}}\n"
            ),
            "2 slices: stacking layers",
        ),
        (
            format!(
                "merge_method: slerp\nbase_model: {base}\nparameters: {{t: 0.5}}\nslices:\n  - sources:\n      - {{model: {base}, layer_range: [0, 1]}}\n      - {{model: {ft1}, layer_range: [0, 1]}}\n"
            ),
            "layer_range [0, 1] is not every layer ([0, 2])",
        ),
    ];
    for (text, needle) in cases {
        let cfg = dir.join("merge.yml");
        std::fs::write(&cfg, &text).unwrap();
        let out = dir.join("out");
        let e = merge_models(&cfg, &out, &MergeOptions::default()).unwrap_err().to_string();
        assert!(e.contains(needle), "expected {needle:?} in: {e}");
        assert!(!out.exists(), "{needle}: an output was written");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Mixture-of-experts checkpoints merge as mergekit 0.1.5 merges them
/// (scripts/make_moe_merge_fixtures.py): its `qwen3_moe` and `mixtral` definitions name the experts
/// fused (`mlp.experts.gate_up_proj [E, 2I, H]`, `down_proj [E, H, I]`), so each expert meets the same
/// expert of the other models; linear and TIES to the bit, SLERP (t filtered to the experts) to a few ulps.
#[test]
fn moe_merges_equal_mergekits() {
    let fx = merge_fixtures().join("moe");
    for arch in ["qwen3_moe", "mixtral"] {
        for (method, tolerance) in [("linear", 0.0), ("ties", 0.0), ("slerp", 1e-6)] {
            let dir = temp_dir(&format!("mk-moe-{arch}-{method}"));
            let mut text = std::fs::read_to_string(fx.join(format!("configs/{method}.toml"))).unwrap();
            for m in ["base", "ft1", "ft2"] {
                text = text.replace(&format!("\"{m}\""), &format!("\"{}\"", fx.join(arch).join(m).display()));
            }
            let cfg = dir.join("merge.toml");
            std::fs::write(&cfg, text).unwrap();
            let out = dir.join("out");
            merge_models(&cfg, &out, &MergeOptions::default()).unwrap();
            let (ours, theirs) = (load_all(&out), load_all(&fx.join(format!("expected/{arch}-{method}.safetensors"))));
            assert_eq!(ours.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>(), "{arch} {method}");
            let experts = ours.keys().filter(|k| k.ends_with("mlp.experts.gate_up_proj")).count();
            assert_eq!(experts, 2, "{arch} {method}: fused experts merged");
            for (k, v) in &ours {
                let d = max_diff(v, &theirs[k]);
                assert!(d <= tolerance, "{arch} {method}: {k} differs from mergekit by {d}");
            }
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
