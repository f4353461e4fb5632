//! DPO against TRL 1.x: the step-by-step replay of `scripts/make_dpo_fixtures.py`'s runs (TRL's
//! DPOTrainer with a PEFT LoRA on the tiny Llama): every step's loss and metrics, and the final
//! adapter.

use lora_core::burn::tensor::Device;
use lora_core::default_device;
use lora_core::network::model::CausalLm;
use lora_train::data::chat_template::{ChatTemplate, FIXED_DATE_UNIX};
use lora_train::optimizer::{AdamW, AdamWConfig};
use lora_train::preference::{
    Dpo, DpoLoss, PairBatch, PairIds, Reference, ReferenceLogProbs, dpo_step, reference_log_probs,
};
use lora_train::step::StepOptions;
use lora_train::trainable::adapter_tensors;
use serde_json::Value;

use crate::common::*;
use crate::trl_replay::{self, assert_final_adapter, assert_metric, ids, model_on};

fn golden() -> Value {
    trl_replay::golden("golden.json")
}

/// The pairs TRL trained `run` on, as token ids.
fn fixture_pairs(run: &str) -> Vec<PairIds> {
    golden()[run]["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| PairIds { prompt: ids(&p["prompt"]), chosen: ids(&p["chosen"]), rejected: ids(&p["rejected"]) })
        .collect()
}

fn model_with(adapter: &str, trainable: bool) -> CausalLm {
    model_on(adapter, trainable, &default_device())
}

/// The run's steps from its step-0 adapter; TRL's reference is the base when that adapter is
/// PEFT's fresh one (B = 0) and a frozen copy of it otherwise, which are the same here for the
/// sigmoid run and differ for the IPO one. Returns the final adapter's values.
fn replay(run: &str, options: StepOptions, precompute: bool) -> Vec<Vec<f32>> {
    replay_on(run, options, precompute, &default_device())
}

fn replay_on(run: &str, options: StepOptions, precompute: bool, device: &Device) -> Vec<Vec<f32>> {
    let g = &golden()[run];
    let pad = g["pad_token_id"].as_u64().unwrap() as u32;
    let dpo = Dpo {
        beta: g["beta"].as_f64().unwrap(),
        loss: DpoLoss::parse(g["loss_type"].as_str().unwrap()).unwrap(),
        label_smoothing: g["label_smoothing"].as_f64().unwrap(),
        gamma: g.get("gamma").and_then(serde_json::Value::as_f64).unwrap_or(0.0),
        sft_weight: g.get("sft_weight").and_then(serde_json::Value::as_f64).unwrap_or(0.0),
    };
    let batch = PairBatch::for_loss(&fixture_pairs(run), pad, &dpo);
    let mut model = model_on(&format!("{run}/adapter-init"), true, device);
    let reference = Reference::snapshot(&model).unwrap();
    let precomputed = precompute.then(|| vec![reference_log_probs(&mut model, &reference, &batch).unwrap()]);
    let config = AdamWConfig { weight_decay: g["weight_decay"].as_f64().unwrap(), ..AdamWConfig::default() };
    let mut opt = AdamW::new(config, &adapter_tensors(&model));
    let lr = g["learning_rate"].as_f64().unwrap();
    for (step, want) in g["steps"].as_array().unwrap().iter().enumerate() {
        let refs = match &precomputed {
            _ if !dpo.loss.needs_reference() => ReferenceLogProbs::Unused,
            Some(p) => ReferenceLogProbs::Precomputed(p),
            None => ReferenceLogProbs::Compute(&reference),
        };
        let out = dpo_step(&mut model, &mut opt, std::slice::from_ref(&batch), refs, &dpo, lr, options, |_| 0).unwrap();
        let m = out.metrics;
        for (name, got) in [
            ("loss", out.step.loss),
            ("rewards/chosen", m.rewards_chosen),
            ("rewards/rejected", m.rewards_rejected),
            ("rewards/accuracies", m.rewards_accuracies),
            ("rewards/margins", m.rewards_margins),
            ("logps/chosen", m.logps_chosen),
            ("logps/rejected", m.logps_rejected),
        ] {
            assert_metric(run, step, name, got, Some(want[name].as_f64().unwrap()));
        }
    }
    assert_final_adapter(run, &model, device)
}

#[test]
fn dpo_sigmoid_replays_trl_step_for_step() {
    let plain = replay("sigmoid", StepOptions { max_grad_norm: 1.0, gradient_checkpointing: false }, false);
    // Recomputation and precomputed reference log-probabilities change nothing.
    let other = replay("sigmoid", StepOptions { max_grad_norm: 1.0, gradient_checkpointing: true }, true);
    assert_eq!(plain, other, "recomputation with precomputed references gave another adapter");
}

/// The same replay on a GPU (`LORA_TEST_GPU=wgpu|cuda`), against the same goldens and tolerances.
#[test]
fn gpu_dpo_replays_trl_step_for_step() {
    let Some(device) = gpu_device() else { return };
    replay_on("sigmoid", StepOptions { max_grad_norm: 1.0, gradient_checkpointing: false }, false, &device);
    replay_on("ipo", StepOptions { max_grad_norm: 1.0, gradient_checkpointing: true }, true, &device);
}

#[test]
fn dpo_on_conversations_replays_trl() {
    replay("chat", StepOptions { max_grad_norm: 1.0, gradient_checkpointing: false }, true);
}

/// SimPO as TRL's experimental CPOTrainer runs it (`loss_type="simpo"`, `cpo_alpha` 0.5): no
/// reference, per-token mean log-probabilities, the target margin gamma.
#[test]
fn simpo_replays_trl() {
    replay("simpo", StepOptions { max_grad_norm: 1.0, gradient_checkpointing: false }, false);
}

/// ORPO as TRL's experimental ORPOTrainer runs it: no reference, the log odds ratio of per-token
/// mean probabilities, and the chosen sequences' NLL over prompt and completion.
#[test]
fn orpo_replays_trl() {
    replay("orpo", StepOptions { max_grad_norm: 1.0, gradient_checkpointing: false }, false);
}

/// TRL's `loss_type=["sigmoid", "sft"]`, `loss_weights=[1, 0.5]`: the SFT term on the chosen.
#[test]
fn dpo_with_an_sft_term_replays_trl() {
    replay("rpo", StepOptions { max_grad_norm: 1.0, gradient_checkpointing: false }, true);
}

#[test]
fn dpo_ipo_replays_trl_against_the_initial_adapter() {
    replay("ipo", StepOptions { max_grad_norm: 1.0, gradient_checkpointing: false }, false);
}

#[test]
fn dpo_first_loss_is_ln_2_when_the_policy_is_its_reference() {
    let batch = PairBatch::new(&fixture_pairs("sigmoid"), 4);
    let mut model = model_with("sigmoid/adapter-init", true);
    let mut opt = AdamW::new(AdamWConfig::default(), &adapter_tensors(&model));
    let dpo = Dpo { beta: 0.1, loss: DpoLoss::Sigmoid, label_smoothing: 0.0, gamma: 0.0, sft_weight: 0.0 };
    let out = dpo_step(
        &mut model,
        &mut opt,
        &[batch],
        ReferenceLogProbs::Compute(&Reference::Base),
        &dpo,
        1e-3,
        StepOptions { max_grad_norm: 1.0, gradient_checkpointing: false },
        |_| 0,
    )
    .unwrap();
    assert!((out.step.loss - std::f64::consts::LN_2).abs() < 1e-6, "first loss {}", out.step.loss);
    assert!(out.step.grad_norm > 1e-3, "no gradient: the test would prove nothing");
}

/// TRL's tokenization of the fixture's pairs (EOS appended, the prompt as the common prefix).
#[test]
fn preference_records_tokenize_as_trl_does() {
    let tok = lora_core::Tokenizer::load_standalone(fixtures().join("models/llama")).unwrap();
    let template = ChatTemplate::for_tokenizer(tok.chat_template.as_deref().unwrap(), &tok, FIXED_DATE_UNIX).unwrap();
    for (run, file) in [("sigmoid", "data.jsonl"), ("chat", "data_chat.jsonl"), ("implicit", "data_implicit.jsonl")] {
        let path = fixtures().join("dpo").join(file);
        let (pairs, skipped) =
            lora_train::preference::load_pairs(&path, &tok, Some(&template), false, &Default::default()).unwrap();
        assert_eq!(skipped, 0);
        assert_eq!(pairs, fixture_pairs(run), "{file}");
    }
}

#[test]
fn bad_preference_records_are_named_by_line() {
    let tok = lora_core::Tokenizer::load_standalone(fixtures().join("models/llama")).unwrap();
    let dir = temp_dir("dpo-bad-data");
    let cases = [
        (r#"{"prompt": "a", "chosen": "b"}"#, "missing field \"rejected\""),
        (r#"{"prompt": "a", "chosen": 3, "rejected": "c"}"#, "must all be strings or all be message lists"),
        (r#"{"prompt": "a", "chosen": " same", "rejected": " same"}"#, "are the same"),
        (
            r#"{"chosen": "a b", "rejected": [{"role": "user", "content": "a"}]}"#,
            "both be strings or both be message lists",
        ),
        (
            r#"{"prompt": [{"role": "user"}], "chosen": [], "rejected": [{"role": "assistant", "content": "x"}]}"#,
            "need a chat template",
        ),
        (r#"["prompt"]"#, "must be a JSON object"),
        (r#"{"chosen": "yes", "rejected": "no"}"#, "share no beginning"),
    ];
    for (i, (line, why)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad{i}.jsonl"));
        std::fs::write(&path, format!("{{\"prompt\": \"x\", \"chosen\": \" y\", \"rejected\": \" z\"}}\n{line}\n"))
            .unwrap();
        let err =
            lora_train::preference::load_pairs(&path, &tok, None, false, &Default::default()).unwrap_err().to_string();
        assert!(err.contains(&format!("bad{i}.jsonl:2: ")) && err.contains(why), "{err}");
        // Skipping keeps the good pair and counts the bad one.
        let (pairs, skipped) =
            lora_train::preference::load_pairs(&path, &tok, None, true, &Default::default()).unwrap();
        assert_eq!((pairs.len(), skipped), (1, 1));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
