//! Algebraic properties of the methods, and every bad-input case of a model merge.

use std::path::{Path, PathBuf};

use lora_merge::{MergeError, MergeOptions, merge_models};

use crate::common::*;

fn run(tag: &str, toml: &str) -> Result<PathBuf, MergeError> {
    let dir = temp_dir(tag);
    let cfg = write_config(&dir, toml);
    let out = dir.join("out");
    merge_models(&cfg, &out, &MergeOptions::default()).map(|_| out)
}

fn assert_same(a: &Path, b: &Path, tol: f32) {
    let (x, y) = (load_all(a), load_all(b));
    assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
    for (k, v) in &x {
        let d = max_diff(v, &y[k]);
        assert!(d <= tol, "{k}: differs by {d}");
    }
}

#[test]
fn linear_of_one_model_is_identity() {
    let out =
        run("lin1", "merge_method = \"linear\"\n[[models]]\nmodel = \"ft1\"\nparameters = { weight = 1.0 }\n").unwrap();
    assert_same(&out, &merge_fixtures().join("ft1"), 0.0);
    // Any weight: normalised away, up to one rounding.
    let out = run("lin2", "merge_method = \"linear\"\n[[models]]\nmodel = \"ft1\"\nparameters = { weight = 0.37 }\n")
        .unwrap();
    assert_same(&out, &merge_fixtures().join("ft1"), 1e-6);
}

#[test]
fn sparse_methods_at_density_one_are_task_arithmetic() {
    let ta = run("ta", "merge_method = \"task_arithmetic\"\nbase_model = \"base\"\n[[models]]\nmodel = \"ft1\"\nparameters = { weight = 1.0 }\n").unwrap();
    for m in ["ties", "dare_ties", "dare_linear", "breadcrumbs", "della", "della_linear"] {
        let gamma = if m.starts_with("breadcrumbs") { ", gamma = 0.0" } else { "" };
        let out = run(
            m,
            &format!("merge_method = \"{m}\"\nbase_model = \"base\"\n[[models]]\nmodel = \"ft1\"\nparameters = {{ weight = 1.0, density = 1.0{gamma} }}\n"),
        )
        .unwrap();
        assert_same(&out, &ta, 0.0);
    }
}

#[test]
fn slerp_endpoints() {
    for (t, expect) in [(0.0, "base"), (1.0, "ft1")] {
        let out = run(
            &format!("slerp{t}"),
            &format!("merge_method = \"slerp\"\nbase_model = \"base\"\n[parameters]\nt = {t:?}\n[[models]]\nmodel = \"base\"\n[[models]]\nmodel = \"ft1\"\n"),
        )
        .unwrap();
        assert_same(&out, &merge_fixtures().join(expect), 0.0);
    }
}

#[test]
fn dare_keeps_density_and_is_seeded() {
    let cfg = |seed: u64| {
        format!(
            "merge_method = \"dare_linear\"\nbase_model = \"base\"\nrandom_seed = {seed}\n[parameters]\nrescale = false\n[[models]]\nmodel = \"ft1\"\nparameters = {{ weight = 1.0, density = 0.3 }}\n"
        )
    };
    let a = load_all(&run("dare1", &cfg(1)).unwrap());
    let a2 = load_all(&run("dare1b", &cfg(1)).unwrap());
    let b = load_all(&run("dare2", &cfg(2)).unwrap());
    assert_eq!(a, a2, "same seed, same merge");
    assert_ne!(a, b, "another seed, another mask");
    let base = load_all(&merge_fixtures().join("base"));
    let ft = load_all(&merge_fixtures().join("ft1"));
    let (mut kept, mut total) = (0usize, 0usize);
    for (k, v) in &a {
        for ((x, b0), f) in v.iter().zip(&base[k]).zip(&ft[k]) {
            // every element is either the base's or the fine-tune's
            assert!(x == b0 || (x - f).abs() <= 1e-6 * f.abs().max(1.0), "{k}");
            kept += (x != b0) as usize;
            total += 1;
        }
    }
    let frac = kept as f64 / total as f64;
    assert!((frac - 0.3).abs() < 0.02, "kept {frac}");
}

/// A recipe's `model+adapter` input is the fold of that adapter: plain LoRA, DoRA (whole rows rescaled
/// to the magnitudes) and trainable tokens (rows replaced) alike.
#[test]
fn folder_plus_adapter_input_equals_the_fold() {
    let fx = fixtures();
    let dir = temp_dir("plus");
    for (k, adapter) in [
        merge_fixtures().join("adapters/a1"),
        fx.join("lora/dora/adapter"),
        fx.join("lora/tokens-llama/adapter-trained"),
    ]
    .iter()
    .enumerate()
    {
        let fold = dir.join(format!("fold{k}"));
        lora_merge::fold_adapters(&fx.join("models/llama"), std::slice::from_ref(adapter), &fold, &Default::default())
            .unwrap();
        let cfg = dir.join(format!("m{k}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "merge_method = \"linear\"\n[[models]]\nmodel = \"{}+{}\"\nparameters = {{ weight = 1.0 }}\n",
                fx.join("models/llama").display(),
                adapter.display()
            ),
        )
        .unwrap();
        let lin = dir.join(format!("lin{k}"));
        merge_models(&cfg, &lin, &MergeOptions::default()).unwrap();
        assert_same(&lin, &fold, 0.0);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

const TWO: &str = "merge_method = \"task_arithmetic\"\nbase_model = \"base\"\n[[models]]\nmodel = \"ft1\"\nparameters = { weight = 1.0 }\n[[models]]\nmodel = \"MODEL\"\nparameters = { weight = 1.0 }\n";

fn run_with_edited(
    tag: &str,
    edit: impl Fn(&mut std::collections::BTreeMap<String, Vec<f32>>),
) -> (PathBuf, Result<PathBuf, MergeError>) {
    let dir = temp_dir(tag);
    let m = edited_copy("ft2", &dir, edit);
    let cfg = write_config(&dir, &TWO.replace("MODEL", m.to_str().unwrap()));
    let out = dir.join("out");
    let r = merge_models(&cfg, &out, &MergeOptions::default()).map(|_| out);
    (dir, r)
}

#[test]
fn different_tensor_sets_and_shapes_are_refused() {
    let (dir, r) = run_with_edited("missing", |m| {
        m.remove("model.layers.1.mlp.up_proj.weight");
    });
    let e = r.unwrap_err().to_string();
    assert!(e.contains("'model.layers.1.mlp.up_proj.weight'") && e.contains("missing"), "{e}");
    assert!(!dir.join("out").exists());
    let (_, r) = run_with_edited("shape", |m| {
        m.get_mut("model.norm.weight").unwrap().push(1.0);
    });
    let e = r.unwrap_err().to_string();
    assert!(e.contains("'model.norm.weight'") && e.contains("[16]") && e.contains("[17]"), "{e}");
}

#[test]
fn nonfinite_results_are_refused_unless_allowed_and_leave_no_output() {
    let (dir, r) = run_with_edited("inf", |m| {
        m.get_mut("model.layers.1.self_attn.o_proj.weight").unwrap()[3] = f32::INFINITY;
    });
    let e = r.unwrap_err();
    assert!(
        matches!(&e, MergeError::NonFinite { tensor, count: 1 } if tensor == "model.layers.1.self_attn.o_proj.weight"),
        "{e}"
    );
    // The merge failed half-way: neither OUT nor its temporary folder remain.
    assert!(!dir.join("out").exists());
    assert!(std::fs::read_dir(&dir).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains("partial")));
    let m = dir.join("ft2-edited");
    let cfg = write_config(&dir, &TWO.replace("MODEL", m.to_str().unwrap()));
    let opts = MergeOptions { allow_nonfinite: true, ..Default::default() };
    merge_models(&cfg, &dir.join("out"), &opts).unwrap();
    // An existing OUT needs force.
    let e = merge_models(&cfg, &dir.join("out"), &opts).unwrap_err();
    assert!(matches!(e, MergeError::Format(lora_formats::FormatError::OutputExists { .. })), "{e}");
    merge_models(&cfg, &dir.join("out"), &MergeOptions { force: true, ..opts }).unwrap();
}

#[test]
fn bad_configurations_name_the_problem() {
    let e = run("badm", "merge_method = \"frobnicate\"\n[[models]]\nmodel = \"ft1\"\n").unwrap_err().to_string();
    assert!(e.contains("unknown merge_method 'frobnicate'"), "{e}");
    let e = run("nobase", "merge_method = \"ties\"\n[[models]]\nmodel = \"ft1\"\nparameters = { weight = 1.0 }\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs a base_model"), "{e}");
    let e = run("noweight", "merge_method = \"ties\"\nbase_model = \"base\"\n[[models]]\nmodel = \"ft1\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("no value for parameter 'weight'"), "{e}");
    let e = run(
        "typo",
        "merge_method = \"ties\"\nbase_model = \"base\"\n[[models]]\nmodel = \"ft1\"\nparameters = { wieght = 1.0 }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("'wieght'"), "{e}");
    let e = run("toml", "merge_method = \"ties\"\nbase_modle = \"base\"\n").unwrap_err().to_string();
    assert!(e.contains("merge.toml") && e.contains("2:1") && e.contains("base_modle"), "{e}");
    let e = run("della", "merge_method = \"della\"\nbase_model = \"base\"\n[[models]]\nmodel = \"ft1\"\nparameters = { weight = 1.0, density = 0.1, epsilon = 0.2 }\n").unwrap_err().to_string();
    assert!(e.contains("density ± epsilon"), "{e}");
}
