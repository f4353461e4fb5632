//! Mixture-of-experts models through the CLI: inspect, generate with transformers' tokens, and a
//! training run that says what its adapters leave out.

use lora_core::{CausalLm, Tokenizer, default_device};

use crate::common::*;

fn tiny_recipe() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../recipes/tiny.toml")
}

#[test]
fn moe_models_generate_transformers_tokens_and_train_attention() {
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

    // A run with all-linear: attention and the dense layer's MLP get adapters, the experts a warning.
    let d = temp_dir("moe-train");
    let run = d.join("run");
    let set = [
        format!("model.base=\"{}\"", fx.join("models/qwen3_moe").display()),
        "lora.targets=\"all-linear\"".to_string(),
        format!("output.dir=\"{}\"", run.display()),
    ];
    let mut args = vec!["train".to_string(), s(&tiny_recipe()).to_string()];
    for x in &set {
        args.extend(["--set".to_string(), x.clone()]);
    }
    let dry: Vec<&str> = args.iter().map(String::as_str).chain(["--dry-run"]).collect();
    let o = lora(&dry);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    // 4 layers × q/k/v/o, and the dense layer 2's gate/up/down.
    assert!(text.contains("# adapters on 19 modules"), "{text}");
    assert!(
        text.contains(
            "# not adapted: the routed experts of this mixture-of-experts model (3 sparse layers × 5 experts"
        ),
        "{text}"
    );
    let o = lora(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("warning: the routed experts"), "{}", stderr(&o));
    let o = lora(&["verify", s(&run)]);
    assert!(o.status.success() && stdout(&o).contains("reproduced byte for byte"), "{}", stderr(&o));
}
