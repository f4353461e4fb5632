//! Mixture-of-experts models through the CLI: inspect, generate with transformers' tokens, and a
//! training run that says what its adapters leave out.

use lora_core::{CausalLm, Tokenizer, default_device};

use crate::common::*;

fn tiny_recipe() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../recipes/tiny.toml")
}

#[test]
fn moe_models_generate_transformers_tokens_and_train_experts_in_peft_s_layout() {
    let fx = fixtures();
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
    // gate_proj without up_proj cannot be: they are one projection of each expert.
    let o = lora(&strs(&args("[\"gate_proj\"]", &run2)));
    assert_user_error(&o, "gate_proj and up_proj are one projection");
}
