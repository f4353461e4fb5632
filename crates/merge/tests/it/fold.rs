//! Adapter folds: PEFT's merge_and_unload, weights, dtypes, and adapters that do not fit.

use lora_merge::{Adapter, FoldOptions, MergeError, fold_adapters};

use crate::common::*;

#[test]
fn adapter_config_and_modules() {
    let a = Adapter::open(merge_fixtures().join("adapters/a2")).unwrap();
    assert!(a.config.use_rslora);
    assert_eq!(a.modules.len(), 3 * 3);
    let m = &a.modules["model.layers.0.self_attn.q_proj"];
    assert_eq!(m.rank, 8);
    assert!((m.scale - 4.0 / 8f64.sqrt()).abs() < 1e-12, "rsLoRA scale alpha/sqrt(r)");
    let a1 = Adapter::open(merge_fixtures().join("adapters/a1")).unwrap();
    assert_eq!(a1.modules["model.layers.2.mlp.down_proj"].scale, 2.0);
    // Unknown keys PEFT writes are kept.
    assert!(a1.config.extra.contains_key("peft_version"));
}

#[test]
fn fold_matches_peft_and_weights_scale_the_update() {
    let fx = fixtures();
    let dir = temp_dir("fold");
    let base = fx.join("models/llama");
    let adapters = [merge_fixtures().join("adapters/a1"), merge_fixtures().join("adapters/a2")];
    fold_adapters(&base, &adapters, &dir.join("both"), &FoldOptions::default()).unwrap();
    let ours = load_all(&dir.join("both"));
    let peft = load_all(&merge_fixtures().join("expected/fold.safetensors"));
    for (k, v) in peft.iter().filter(|(k, _)| k.ends_with("weight")) {
        let d = max_diff(&ours[k], v);
        assert!(d < 1e-5, "{k}: {d}");
    }
    // W + 0.5·ΔW is halfway between W and W + ΔW.
    let half = FoldOptions { weights: Some(vec![0.5]), ..Default::default() };
    fold_adapters(&base, &adapters[..1], &dir.join("half"), &half).unwrap();
    fold_adapters(&base, &adapters[..1], &dir.join("full"), &FoldOptions::default()).unwrap();
    let (h, f, b) = (load_all(&dir.join("half")), load_all(&dir.join("full")), load_all(&base));
    for k in b.keys() {
        let mid: Vec<f32> = b[k].iter().zip(&f[k]).map(|(x, y)| (x + y) / 2.0).collect();
        assert!(max_diff(&h[k], &mid) < 1e-5, "{k}");
    }
    // Wrong number of weights.
    let bad = FoldOptions { weights: Some(vec![1.0, 2.0]), ..Default::default() };
    let e = fold_adapters(&base, &adapters[..1], &dir.join("x"), &bad).unwrap_err();
    assert!(e.to_string().contains("2 values for 1 adapters"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn adapter_targets_missing_from_the_base_are_refused() {
    let dir = temp_dir("fold-bad");
    // Copy a1 and rename one module so it targets nothing in the base.
    let src = merge_fixtures().join("adapters/a1");
    let bad = dir.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::copy(src.join("adapter_config.json"), bad.join("adapter_config.json")).unwrap();
    let mut tensors = load_all(&src.join("adapter_model.safetensors"));
    let a = tensors.remove("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").unwrap();
    let b = tensors.remove("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight").unwrap();
    let list = vec![
        ("base_model.model.model.layers.0.self_attn.qq_proj.lora_A.weight", vec![4, 32], a),
        ("base_model.model.model.layers.0.self_attn.qq_proj.lora_B.weight", vec![64, 4], b),
    ];
    write_f32_safetensors(&bad.join("adapter_model.safetensors"), &list);
    let e = fold_adapters(
        &fixtures().join("models/llama"),
        std::slice::from_ref(&bad),
        &dir.join("o"),
        &FoldOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, MergeError::Mismatch(_)));
    assert!(e.to_string().contains("module 'model.layers.0.self_attn.qq_proj' is not in the base model"), "{e}");
    assert!(!dir.join("o").exists());
    // No adapter_config.json at all.
    let e = fold_adapters(
        &fixtures().join("models/llama"),
        std::slice::from_ref(&dir),
        &dir.join("o"),
        &FoldOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("no adapter_config.json"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Qwen3.5's Hub form: a PEFT adapter on the Gated DeltaNet and attention projections folds to
/// merge_and_unload's weights, and the vision tower and mtp tensors pass through unchanged.
#[test]
fn qwen3_5_hub_fold_matches_peft_and_keeps_vision_and_mtp() {
    let fx = fixtures();
    let dir = temp_dir("fold-qwen3_5");
    let base = fx.join("models/qwen3_5-hub");
    let adapter = fx.join("golden/qwen3_5-hub-adapter");
    fold_adapters(&base, &[adapter.clone()], &dir.join("merged"), &FoldOptions::default()).unwrap();
    let ours = load_all(&dir.join("merged"));
    let peft = load_all(&adapter.join("merged.safetensors"));
    let original = load_all(&base);
    let mut changed = 0;
    for (k, v) in &peft {
        let d = max_diff(&ours[k], v);
        assert!(d < 1e-5, "{k}: {d}");
        changed += usize::from(original[k] != *v);
    }
    assert_eq!(changed, 5 * 2 + 1 + 3, "5 GDN projections of 2 layers, q_proj of 1, down_proj of 3");
    let passed: Vec<&String> =
        original.keys().filter(|k| k.starts_with("model.visual.") || k.starts_with("mtp.")).collect();
    assert!(passed.iter().any(|k| k.starts_with("mtp.")) && passed.len() > 10);
    for k in passed {
        assert_eq!(ours[k], original[k], "{k} must pass through");
    }
    assert_eq!(ours.len(), original.len());
}

/// A base that no command could load afterwards is refused before anything is written: a Qwen3.5
/// layer without its A_log, or a projection of the wrong shape.
#[test]
fn fold_refuses_a_base_that_could_not_be_loaded() {
    let fx = fixtures();
    let src = fx.join("models/qwen3_5-hub");
    let adapter = fx.join("golden/qwen3_5-hub-adapter");
    let dir = temp_dir("fold-unloadable");
    let original = load_all(&src);
    let shapes: std::collections::BTreeMap<String, Vec<usize>> = {
        let m = lora_merge::ModelDir::open(&src).unwrap();
        m.names().map(|n| (n.to_string(), m.get(n).unwrap().info.shape.clone())).collect()
    };
    let write = |name: &str, edit: &dyn Fn(&mut Vec<(String, Vec<usize>, Vec<f32>)>)| {
        let base = dir.join(name);
        std::fs::create_dir_all(&base).unwrap();
        std::fs::copy(src.join("config.json"), base.join("config.json")).unwrap();
        let mut list: Vec<(String, Vec<usize>, Vec<f32>)> =
            original.iter().map(|(k, v)| (k.clone(), shapes[k].clone(), v.clone())).collect();
        edit(&mut list);
        let refs: Vec<(&str, Vec<usize>, Vec<f32>)> =
            list.iter().map(|(k, s, v)| (k.as_str(), s.clone(), v.clone())).collect();
        write_f32_safetensors(&base.join("model.safetensors"), &refs);
        base
    };
    // Unedited, the rewritten base folds (the check refuses nothing a loader takes).
    let fine = write("fine", &|_| {});
    fold_adapters(&fine, &[adapter.clone()], &dir.join("out-fine"), &FoldOptions::default()).unwrap();

    let a_log = "model.language_model.layers.0.linear_attn.A_log";
    assert!(original.contains_key(a_log));
    let missing = write("missing", &|l| l.retain(|(k, _, _)| k != a_log));
    let err = fold_adapters(&missing, &[adapter.clone()], &dir.join("out-missing"), &FoldOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains(a_log) && err.contains("missing"), "{err}");
    assert!(!dir.join("out-missing").exists(), "nothing is written");

    let q = "model.language_model.layers.1.mlp.up_proj.weight";
    let reshaped = write("reshaped", &|l| {
        let t = l.iter_mut().find(|(k, _, _)| k == q).unwrap();
        t.1 = vec![t.1[1], t.1[0]];
    });
    let err = fold_adapters(&reshaped, &[adapter], &dir.join("out-reshaped"), &FoldOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains(q) && err.contains("shape"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An adapter made on Qwen3.5's text form (`model.layers.N`) folds into the Hub form
/// (`model.language_model.layers.N`) as the same adapter named for it does, saying so.
#[test]
fn a_text_form_adapter_folds_into_the_hub_form_with_its_names_mapped() {
    let fx = fixtures();
    let dir = temp_dir("fold-relayout");
    let base = fx.join("models/qwen3_5-hub");
    let hub_adapter = fx.join("golden/qwen3_5-hub-adapter");
    let text_adapter = dir.join("text-adapter");
    std::fs::create_dir_all(&text_adapter).unwrap();
    std::fs::copy(hub_adapter.join("adapter_config.json"), text_adapter.join("adapter_config.json")).unwrap();
    let file = hub_adapter.join("adapter_model.safetensors");
    let m = lora_merge::ModelDir::open(&file).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = load_all(&file)
        .into_iter()
        .map(|(k, v)| {
            let shape = m.get(&k).unwrap().info.shape.clone();
            (k.replace("model.language_model.layers.", "model.layers."), shape, v)
        })
        .collect();
    assert!(tensors.iter().all(|(k, _, _)| !k.contains("language_model")));
    let refs: Vec<(&str, Vec<usize>, Vec<f32>)> =
        tensors.iter().map(|(k, s, v)| (k.as_str(), s.clone(), v.clone())).collect();
    write_f32_safetensors(&text_adapter.join("adapter_model.safetensors"), &refs);

    let direct = fold_adapters(&base, &[hub_adapter], &dir.join("direct"), &FoldOptions::default()).unwrap();
    assert!(direct.relayouts.is_empty());
    let mapped = fold_adapters(&base, &[text_adapter.clone()], &dir.join("mapped"), &FoldOptions::default()).unwrap();
    assert_eq!(mapped.relayouts.len(), 1, "{:?}", mapped.relayouts);
    assert!(mapped.relayouts[0].contains("text form") && mapped.relayouts[0].contains("Hub form"));
    assert_eq!(mapped.updated, direct.updated);
    assert_eq!(load_all(&dir.join("mapped")), load_all(&dir.join("direct")));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A PEFT DoRA adapter (`use_dora`, `…lora_magnitude_vector`) folds as PEFT's `merge_and_unload`
/// folds it (`scripts/make_dora_fixtures.py`): W' = m / ‖W + sBA‖_row ⊙ (W + sBA), each row scaled to
/// its magnitude. Weighted folds, merge-adapters and llama.cpp export refuse it by name.
#[test]
fn dora_folds_as_peft_merges_it() {
    let fx = fixtures();
    let dir = temp_dir("fold-dora");
    let base = fx.join("models/llama");
    let dora = fx.join("lora/dora/adapter");
    let a = Adapter::open(&dora).unwrap();
    assert!(a.config.use_dora && a.modules.values().all(|m| m.magnitude.is_some()), "magnitudes read");
    fold_adapters(&base, std::slice::from_ref(&dora), &dir.join("out"), &FoldOptions::default()).unwrap();
    let (ours, peft, b) =
        (load_all(&dir.join("out")), load_all(&fx.join("lora/dora/merged.safetensors")), load_all(&base));
    let mut compared = 0;
    for (k, v) in peft.iter().filter(|(k, _)| k.ends_with("proj.weight")) {
        let scale = v.iter().fold(1e-3f32, |m, x| m.max(x.abs()));
        let d = max_diff(&ours[k], v);
        assert!(d <= 2e-6 * scale, "{k}: {d} (scale {scale})");
        assert!(max_diff(&b[k], v) > 1e-3, "{k}: the fold changes nothing");
        compared += 1;
    }
    assert_eq!(compared, 3 * 3, "q, v and down of three layers");
    // Every row of a folded weight has its magnitude as norm.
    let m = a.tensor_f32(a.modules["model.layers.0.self_attn.q_proj"].magnitude.as_ref().unwrap());
    let w = &ours["model.layers.0.self_attn.q_proj.weight"];
    for (row, &mag) in w.chunks(w.len() / m.len()).zip(&m) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - mag.abs()).abs() <= 1e-5 * mag.abs().max(1.0), "row norm {norm} for magnitude {mag}");
    }
    let half = FoldOptions { weights: Some(vec![0.5]), ..Default::default() };
    let e = fold_adapters(&base, std::slice::from_ref(&dora), &dir.join("half"), &half).unwrap_err();
    assert!(e.to_string().contains("DoRA adapter folds at weight 1 only"), "{e}");
    let e = lora_merge::export_adapter_gguf(&dora, &base, &dir.join("x.gguf"), lora_merge::gguf::GgmlType::F32, false)
        .unwrap_err();
    assert!(e.to_string().contains("lora merge BASE ADAPTER"), "{e}");
    assert!(!dir.join("x.gguf").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
