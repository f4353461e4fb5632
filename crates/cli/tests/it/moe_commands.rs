//! Mixture-of-experts models through the CLI: inspect, generate with transformers' tokens, and a
//! training run that says what its adapters leave out.

use lora_core::{CausalLm, Tokenizer, default_device};

use crate::common::*;

fn tiny_recipe() -> std::path::PathBuf {
    root().join("recipes/tiny.toml")
}

#[test]
fn moe_models_generate_transformers_tokens_and_train_experts_in_peft_s_layout() {
    let fx = fixtures();
    // inspect says what the experts are.
    let o = lora(&["inspect", s(&fx.join("models/qwen3_moe"))]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("; experts: 5 of 24 in 3 of 4 layers, top 3 renormalised"), "{}", stdout(&o));
    let o = lora(&["inspect", s(&fx.join("models/qwen3_5_moe"))]);
    assert!(
        stdout(&o).contains("experts: 6 of 20 in 4 of 4 layers, top 2 renormalised, a shared expert of 36"),
        "{}",
        stdout(&o)
    );
    // Greedy generation equals transformers' (the golden's prompts).
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("golden/mixtral.json")).unwrap()).unwrap();
    let dir = fx.join("models/mixtral");
    let model = CausalLm::load_dir(&dir, &default_device()).unwrap();
    let tok = Tokenizer::load_dir(&dir, &model.config).unwrap();
    for g in golden["greedy"].as_array().unwrap() {
        let prompt = g["prompt"].as_str().unwrap();
        let ids: Vec<u32> = g["generated_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let expected = format!("{prompt}{}\n", tok.decode(&ids, true).unwrap());
        let o = lora(&["generate", "--model", s(&dir), "--prompt", prompt, "--max-new-tokens", "12"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stdout(&o), expected);
    }

    // all-linear: attention and every expert's gate_up_proj and down_proj (PEFT's layout), not the
    // routers, nor (as PEFT) the dense layer's MLP.
    let d = temp_dir("moe-train");
    let run = d.join("run");
    let args = |targets: &str, run: &std::path::Path| -> Vec<String> {
        let mut args = vec!["train".to_string(), s(&tiny_recipe()).to_string()];
        for x in [
            format!("model.base=\"{}\"", fx.join("models/qwen3_moe").display()),
            format!("lora.targets={targets}"),
            format!("output.dir=\"{}\"", run.display()),
        ] {
            args.extend(["--set".to_string(), x]);
        }
        args
    };
    fn strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let all = args("\"all-linear\"", &run);
    let o = lora(&[strs(&all), vec!["--dry-run"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    // 4 layers × q/k/v/o, and 3 sparse layers × 5 experts × 2 projections.
    assert!(text.contains("# adapters on 46 modules"), "{text}");
    assert!(!text.contains("# not adapted"), "{text}");
    let o = lora(&strs(&all));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("warning: the routed experts"), "{}", stderr(&o));
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["target_parameters"], serde_json::json!(["gate_up_proj", "down_proj"]), "{cfg}");
    assert_eq!(cfg["target_modules"], serde_json::json!(["k_proj", "o_proj", "q_proj", "v_proj"]), "{cfg}");
    assert_eq!(cfg["rank_pattern"][r".*\.gate_up_proj"], 8, "{cfg}");
    let o = lora(&["verify", s(&run)]);
    assert!(o.status.success() && stdout(&o).contains("reproduced byte for byte"), "{}", stderr(&o));
    // The adapter applies in generate (read back from PEFT's layout) and changes the output.
    let model = fx.join("models/qwen3_moe");
    let generate = |extra: &[&str]| {
        let o = lora(
            &[&["generate", "--model", s(&model), "--prompt", "The quick brown", "--max-new-tokens", "8"], extra]
                .concat(),
        );
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    assert_ne!(generate(&["--adapter", s(&run)]), generate(&[]));

    // Attention only: a warning names the experts left out.
    let run2 = d.join("run2");
    let o = lora(&[strs(&args("[\"q_proj\", \"v_proj\"]", &run2)), vec!["--dry-run"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(
            "# not adapted: the routed experts of this mixture-of-experts model (3 sparse layers × 5 experts"
        ),
        "{}",
        stdout(&o)
    );
    // The router trains only when named ("gate"), and PEFT knows it as a parameter (gate.weight).
    let run3 = d.join("run3");
    let o = lora(&strs(&args("[\"q_proj\", \"gate\"]", &run3)));
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run3.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["target_parameters"], serde_json::json!(["gate.weight"]), "{cfg}");
    assert_eq!(cfg["target_modules"], serde_json::json!(["q_proj"]), "{cfg}");
    let keys = lora_formats::safetensors::SafetensorsFile::open(run3.join("adapter_model.safetensors")).unwrap();
    assert!(keys.tensors().contains_key("base_model.model.model.layers.0.mlp.gate.lora_B.weight"));
    assert_ne!(generate(&["--adapter", s(&run3)]), generate(&[]));
    // gate_proj without up_proj cannot be: they are one projection of each expert.
    let o = lora(&strs(&args("[\"gate_proj\"]", &run2)));
    assert_user_error(&o, "gate_proj and up_proj are one projection");
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// `lora merge` folds an adapter on the routed experts (PEFT's flattened layout) into the base's own
/// expert tensors, equal to PEFT's merge_and_unload: per expert (Qwen3-MoE, Qwen3.5-MoE, Mixtral's
/// w1/w3/w2), and into a checkpoint whose experts are fused on disk, block by block.
#[test]
fn expert_adapters_fold_as_peft_merges_them() {
    let fx = fixtures();
    let d = temp_dir("moe-fold");
    for (model, fixture) in [
        ("qwen3_moe", "qwen3_moe-experts-replay"),
        ("mixtral", "mixtral-experts-replay"),
        ("qwen3_5_moe", "qwen3_5_moe-experts-replay"),
    ] {
        let out = d.join(model);
        let adapter = fx.join(fixture).join("adapter-trained");
        let o = lora(&["merge", s(&fx.join("models").join(model)), s(&adapter), "-o", s(&out)]);
        assert!(o.status.success(), "{}", stderr(&o));
        if model == "qwen3_moe" {
            // q/v_proj in 4 layers, and gate, up and down of 5 experts in its 3 sparse layers.
            let said = format!("{}{}", stdout(&o), stderr(&o));
            assert!(said.contains("53 of 86 tensors updated"), "{said}");
        }
        let ours = f32_tensors(&out.join("model.safetensors"));
        let peft = f32_tensors(&fx.join(fixture).join("merged-experts.safetensors"));
        let base = f32_tensors(&fx.join("models").join(model).join("model.safetensors"));
        for (name, (shape, want)) in &peft {
            let (s2, got) = &ours[name];
            assert_eq!(s2, shape, "{model}: {name}");
            let d = max_diff(got, want);
            assert!(d < 1e-5, "{model}: {name} differs from PEFT's merge by {d}");
            assert!(max_diff(&base[name].1, want) > 1e-4, "{model}: {name}: the adapter changed nothing");
        }
    }
    // mergekit's methods merge MoE checkpoints tensor by tensor, expert with expert: a linear merge of
    // the base and its fold is their mean, experts included.
    let base_dir = fx.join("models/qwen3_moe");
    let recipe = d.join("linear.toml");
    std::fs::write(
        &recipe,
        format!(
            "merge_method = \"linear\"\n[[models]]\nmodel = \"{}\"\nparameters = {{ weight = 0.5 }}\n[[models]]\n\
             model = \"{}\"\nparameters = {{ weight = 0.5 }}\n",
            base_dir.display(),
            d.join("qwen3_moe").display()
        ),
    )
    .unwrap();
    let o = lora(&["merge", "--config", s(&recipe), "-o", s(&d.join("linear"))]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b, m) = (
        f32_tensors(&base_dir.join("model.safetensors")),
        f32_tensors(&d.join("qwen3_moe/model.safetensors")),
        f32_tensors(&d.join("linear/model.safetensors")),
    );
    let expert = "model.layers.1.mlp.experts.4.up_proj.weight";
    assert!(max_diff(&a[expert].1, &b[expert].1) > 1e-3);
    for (name, (_, v)) in &m {
        let mean: Vec<f32> = a[name].1.iter().zip(&b[name].1).map(|(x, y)| 0.5 * x + 0.5 * y).collect();
        assert!(max_diff(v, &mean) < 1e-6, "linear merge: {name}");
    }
    // The same fold into the Qwen3-MoE checkpoint with its experts fused on disk.
    let src = fx.join("models/qwen3_moe");
    let fused = d.join("fused-base");
    std::fs::create_dir_all(&fused).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), fused.join(f)).unwrap();
    }
    let mut t = f32_tensors(&src.join("model.safetensors"));
    for layer in [0, 1, 3] {
        let p = format!("model.layers.{layer}.mlp.experts");
        let (mut gu, mut dn) = (Vec::new(), Vec::new());
        for e in 0..5 {
            gu.extend(t.remove(&format!("{p}.{e}.gate_proj.weight")).unwrap().1);
            gu.extend(t.remove(&format!("{p}.{e}.up_proj.weight")).unwrap().1);
            dn.extend(t.remove(&format!("{p}.{e}.down_proj.weight")).unwrap().1);
        }
        t.insert(format!("{p}.gate_up_proj"), (vec![5, 48, 32], gu));
        t.insert(format!("{p}.down_proj"), (vec![5, 32, 24], dn));
    }
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = t.into_iter().map(|(n, (s, v))| (n, s, v)).collect();
    lora_core::io::safetensors_write::write_safetensors(
        &fused.join("model.safetensors"),
        &tensors,
        lora_core::io::safetensors_write::StoredDtype::F32,
        &Default::default(),
    )
    .unwrap();
    let out = d.join("fused-out");
    let adapter = fx.join("qwen3_moe-experts-replay/adapter-trained");
    let o = lora(&["merge", s(&fused), s(&adapter), "-o", s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ours = f32_tensors(&out.join("model.safetensors"));
    let peft = f32_tensors(&fx.join("qwen3_moe-experts-replay/merged-experts.safetensors"));
    for layer in [0, 1, 3] {
        let p = format!("model.layers.{layer}.mlp.experts");
        let (gu, dn) = (&ours[&format!("{p}.gate_up_proj")].1, &ours[&format!("{p}.down_proj")].1);
        for e in 0..5 {
            let want = [&peft[&format!("{p}.{e}.gate_proj.weight")].1[..], &peft[&format!("{p}.{e}.up_proj.weight")].1]
                .concat();
            assert!(
                max_diff(&gu[e * 48 * 32..(e + 1) * 48 * 32], &want) < 1e-5,
                "fused gate_up, layer {layer} expert {e}"
            );
            let want = &peft[&format!("{p}.{e}.down_proj.weight")].1;
            assert!(max_diff(&dn[e * 32 * 24..(e + 1) * 32 * 24], want) < 1e-5, "fused down, layer {layer} expert {e}");
        }
    }
    // Combining expert adapters into one cannot carry them yet, and says so by name.
    let o = lora(&["merge-adapters", s(&adapter), s(&adapter), "-o", s(&d.join("combined"))]);
    assert!(!o.status.success() && stderr(&o).contains("adapts routed experts"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&d);
}

/// A config.json that asks transformers for the routers' load-balancing loss (`output_router_logits`)
/// gets a warning and a dry-run line saying lora trains without it; one that does not, neither.
#[test]
fn the_load_balancing_loss_lora_does_not_add_is_said() {
    let fx = fixtures();
    let d = temp_dir("moe-aux-loss");
    let model = d.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in std::fs::read_dir(fx.join("models/mixtral")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, model.join(f.file_name().unwrap())).unwrap();
    }
    let dry_run = |dir: &std::path::Path| {
        let base = format!("model.base=\"{}\"", dir.display());
        let out = format!("output.dir=\"{}\"", d.join("run").display());
        lora(&["train", s(&tiny_recipe()), "--set", &base, "--set", &out, "--dry-run"])
    };
    let o = dry_run(&model);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).contains("# not applied") && !stderr(&o).contains("load-balancing"), "{}", stderr(&o));
    let path = model.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    cfg["output_router_logits"] = serde_json::json!(true);
    cfg["router_aux_loss_coef"] = serde_json::json!(0.02);
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let o = dry_run(&model);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("# not applied: config.json sets output_router_logits"), "{}", stdout(&o));
    assert!(stderr(&o).contains("transformers adds 0.02 x the routers' load-balancing loss"), "{}", stderr(&o));
}
