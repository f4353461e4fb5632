//! KTO against TRL 1.x: the step-by-step replay of `scripts/make_kto_fixtures.py`'s runs (TRL's
//! KTOTrainer with a PEFT LoRA on the tiny Llama, micro-batches with gradient accumulation): every
//! step's loss and metrics, the final adapter, and TRL's tokenization of the records.

use lora_core::burn::tensor::Device;
use lora_core::default_device;
use lora_train::data::chat_template::{ChatTemplate, FIXED_DATE_UNIX};
use lora_train::optimizer::{AdamW, AdamWConfig};
use lora_train::preference::kto::{
    Kto, KtoLoss, UnpairedBatch, UnpairedIds, kto_step, load_unpaired, mismatch, unpaired_reference_log_probs,
};
use lora_train::preference::{Reference, ReferenceLogProbs};
use lora_train::step::StepOptions;
use lora_train::trainable::adapter_tensors;
use serde_json::Value;

use crate::common::*;
use crate::trl_replay::{self, assert_final_adapter, assert_metric, ids, model_on};

fn golden() -> Value {
    trl_replay::golden("kto_golden.json")
}

/// The examples TRL trained `run` on, in its (sequential) order.
fn fixture_examples(run: &str) -> Vec<UnpairedIds> {
    golden()[run]["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| UnpairedIds {
            prompt: ids(&e["prompt"]),
            completion: ids(&e["completion"]),
            kl_completion: ids(&e["kl_completion"]),
            desirable: e["label"].as_bool().unwrap(),
        })
        .collect()
}

fn kto_of(g: &Value) -> Kto {
    Kto {
        beta: g["beta"].as_f64().unwrap(),
        loss: KtoLoss::parse(g["loss_type"].as_str().unwrap()).unwrap(),
        desirable_weight: g["desirable_weight"].as_f64().unwrap(),
        undesirable_weight: g["undesirable_weight"].as_f64().unwrap(),
    }
}

/// The run's steps from its step-0 adapter, which is also TRL's reference (its "ref" copy).
/// TRL's sequential sampler gives each step the next `grad_accum` micro-batches of the data, in
/// order, around again at its end. Returns the final adapter's values.
fn replay(run: &str, options: StepOptions, precompute: bool) -> Vec<Vec<f32>> {
    replay_on(run, options, precompute, &default_device())
}

fn replay_on(run: &str, options: StepOptions, precompute: bool, device: &Device) -> Vec<Vec<f32>> {
    let g = &golden()[run];
    let kto = kto_of(g);
    let pad = g["pad_token_id"].as_u64().unwrap() as u32;
    let (batch, accum) = (g["batch_size"].as_u64().unwrap() as usize, g["grad_accum"].as_u64().unwrap() as usize);
    let examples = fixture_examples(run);
    let micro: Vec<UnpairedBatch> = examples.chunks(batch).map(|c| UnpairedBatch::new(c, pad, &kto)).collect();
    let mut model = model_on(&format!("{run}/adapter-init"), true, device);
    let reference = Reference::snapshot(&model).unwrap();
    let precomputed: Option<Vec<Vec<f64>>> = precompute
        .then(|| micro.iter().map(|b| unpaired_reference_log_probs(&mut model, &reference, b).unwrap()).collect());
    let mut opt = AdamW::new(AdamWConfig { weight_decay: 0.0, ..AdamWConfig::default() }, &adapter_tensors(&model));
    let mut next = 0;
    for (step, want) in g["steps"].as_array().unwrap().iter().enumerate() {
        let idx: Vec<usize> = (0..accum).map(|k| (next + k) % micro.len()).collect();
        next += accum;
        let batches: Vec<UnpairedBatch> = idx.iter().map(|&i| micro[i].clone()).collect();
        let pre: Option<Vec<Vec<f64>>> = precomputed.as_ref().map(|p| idx.iter().map(|&i| p[i].clone()).collect());
        let refs = match &pre {
            Some(p) => ReferenceLogProbs::Precomputed(p),
            None => ReferenceLogProbs::Compute(&reference),
        };
        let out = kto_step(&mut model, &mut opt, &batches, refs, &kto, 1e-3, options, |_| 0).unwrap();
        let m = out.metrics;
        for (name, got) in [
            ("loss", out.step.loss),
            ("kl", m.kl),
            ("rewards/chosen", m.rewards_chosen),
            ("rewards/rejected", m.rewards_rejected),
            ("rewards/margins", m.rewards_margins),
            ("logps/chosen", m.logps_chosen),
            ("logps/rejected", m.logps_rejected),
        ] {
            assert_metric(run, step, name, got, want.get(name).and_then(Value::as_f64));
        }
    }
    assert_final_adapter(run, &model, device)
}

#[test]
fn kto_replays_trl_step_for_step() {
    let plain = replay("kto", StepOptions { max_grad_norm: 1.0, gradient_checkpointing: false }, false);
    // Recomputation and precomputed reference log-probabilities change nothing.
    let other = replay("kto", StepOptions { max_grad_norm: 1.0, gradient_checkpointing: true }, true);
    assert_eq!(plain, other, "recomputation with precomputed references gave another adapter");
}

/// The same replay on a GPU (`LORA_TEST_GPU=wgpu|cuda`), against the same goldens and tolerances.
#[test]
fn gpu_kto_replays_trl_step_for_step() {
    let Some(device) = gpu_device() else { return };
    replay_on("kto", StepOptions { max_grad_norm: 1.0, gradient_checkpointing: true }, false, &device);
    replay_on("apo", StepOptions { max_grad_norm: 1.0, gradient_checkpointing: false }, true, &device);
}

#[test]
fn kto_on_conversations_replays_trl() {
    replay("kto_chat", StepOptions { max_grad_norm: 1.0, gradient_checkpointing: false }, true);
}

/// Preference pairs unpaired as TRL does: the micro-batches hold one side each, so no step has a
/// reward margin.
#[test]
fn kto_on_unpaired_pairs_replays_trl() {
    replay("kto_paired", StepOptions { max_grad_norm: 1.0, gradient_checkpointing: false }, false);
}

#[test]
fn apo_zero_unpaired_replays_trl() {
    replay("apo", StepOptions { max_grad_norm: 1.0, gradient_checkpointing: false }, true);
}

/// TRL's tokenization of the records, its unpairing of pairs, and its mismatched completions.
#[test]
fn kto_records_tokenize_and_mismatch_as_trl_does() {
    let tok = lora_core::Tokenizer::load_standalone(fixtures().join("models/llama")).unwrap();
    let template = ChatTemplate::for_tokenizer(tok.chat_template.as_deref().unwrap(), &tok, FIXED_DATE_UNIX).unwrap();
    for run in ["kto", "kto_chat", "kto_paired", "apo"] {
        let g = &golden()[run];
        let path = fixtures().join("dpo").join(g["data"].as_str().unwrap());
        let (mut examples, skipped) = load_unpaired(&path, &tok, Some(&template), false, &Default::default()).unwrap();
        assert_eq!(skipped, 0);
        if kto_of(g).loss.needs_kl() {
            mismatch(&mut examples, g["batch_size"].as_u64().unwrap() as usize);
        }
        assert_eq!(examples, fixture_examples(run), "{run}");
    }
}

#[test]
fn bad_kto_records_are_named_by_line() {
    let tok = lora_core::Tokenizer::load_standalone(fixtures().join("models/llama")).unwrap();
    let dir = temp_dir("kto-bad-data");
    let cases = [
        (r#"{"prompt": "a", "completion": " b"}"#, "missing field \"label\""),
        (r#"{"prompt": "a", "completion": " b", "label": 1}"#, "\"label\" must be true or false"),
        (r#"{"prompt": "a", "completion": 3, "label": true}"#, "must all be strings or all be message lists"),
        (r#"{"prompt": "a", "chosen": " b", "rejected": " c"}"#, "missing field \"completion\""),
    ];
    for (i, (line, why)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad{i}.jsonl"));
        std::fs::write(&path, format!("{{\"prompt\": \"x\", \"completion\": \" y\", \"label\": false}}\n{line}\n"))
            .unwrap();
        let err = load_unpaired(&path, &tok, None, false, &Default::default()).unwrap_err().to_string();
        assert!(err.contains(&format!("bad{i}.jsonl:2: ")) && err.contains(why), "{err}");
        let (examples, skipped) = load_unpaired(&path, &tok, None, true, &Default::default()).unwrap();
        assert_eq!((examples.len(), skipped), (1, 1));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
