//! Training data: every format, exact assistant masks on four real chat templates (golden from
//! transformers), length policies, weights, packing equivalence, and each kind of bad input.

use std::path::{Path, PathBuf};

use lora_core::{CausalLm, Tokenizer, default_device};
use lora_train::data::chat_template::{ChatTemplate, FIXED_DATE_UNIX};
use lora_train::data::format::{Format, Tokenize};
use lora_train::data::turns::TurnMode;
use lora_train::data::{DataOptions, Example, Overflow, end_of_turn_ids, load_examples, packing};
use serde_json::{Value, json};

use crate::common::*;

fn chat_tokenizer() -> Tokenizer {
    Tokenizer::load_standalone(fixtures().join("chat_tokenizer")).unwrap()
}

#[test]
fn chat_templates_render_and_mask_as_transformers() {
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("chat_golden.json")).unwrap()).unwrap();
    let tok = chat_tokenizer();
    let mut checked = 0;
    for case in golden["cases"].as_array().unwrap() {
        let name = case["template"].as_str().unwrap();
        let sp = &golden["templates"][name];
        let src = std::fs::read_to_string(fixtures().join(format!("chat_templates/{name}.jinja"))).unwrap();
        let t = ChatTemplate::new(
            &src,
            sp["bos"].as_str().map(str::to_string),
            sp["eos"].as_str().map(str::to_string),
            FIXED_DATE_UNIX,
        )
        .unwrap();
        let conv = golden["conversations"][case["conversation"].as_u64().unwrap() as usize].as_array().unwrap().clone();
        let what = format!("{name} / conversation {}", case["conversation"]);
        if let Some(err) = case.get("error") {
            let ours = t.render_with_assistant_spans(&conv).unwrap_err();
            assert!(ours.contains(err.as_str().unwrap()), "{what}: {ours}");
            continue;
        }
        let (text, spans) = t.render_with_assistant_spans(&conv).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap(), "{what}: rendering");
        let want: Vec<(u64, u64)> = case["spans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s[0].as_u64().unwrap(), s[1].as_u64().unwrap()))
            .collect();
        let got: Vec<(u64, u64)> = spans.iter().map(|r| (r.start as u64, r.end as u64)).collect();
        assert_eq!(got, want, "{what}: assistant spans");
        // Through the chat format: the same ids and the same trained tokens.
        let tz = Tokenize {
            tok: &tok,
            template: Some(&t),
            train_on_inputs: false,
            end_of_turn: end_of_turn_ids(&tok),
            turns: TurnMode::Auto,
            reasoning_field: None,
        };
        let ex = tz.example(&json!({ "messages": conv }), Format::Chat).unwrap();
        let ids: Vec<u64> = ex.ids.iter().map(|&i| i as u64).collect();
        let want_ids: Vec<u64> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(ids, want_ids, "{what}: token ids");
        let trained: Vec<u64> = ex.labels.iter().map(|l| u64::from(l.is_some())).collect();
        let want_trained: Vec<u64> = case["trained"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(trained, want_trained, "{what}: trained-token mask");
        // Every trained run ends with an end-of-turn token.
        let eot = end_of_turn_ids(&tok);
        for k in 0..trained.len() {
            if trained[k] == 1 && trained.get(k + 1) != Some(&1) {
                assert!(eot.contains(&ex.ids[k]), "{what}: a trained run ends without end-of-turn");
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 14);
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn model_tok() -> Tokenizer {
    let m = CausalLm::load_dir(fixtures().join("models/llama"), &default_device()).unwrap();
    Tokenizer::load_dir(fixtures().join("models/llama"), &m.config).unwrap()
}

fn opts(format: &'static str) -> DataOptions<'static> {
    DataOptions {
        format,
        max_seq_len: 64,
        overflow: Overflow::Truncate,
        train_on_inputs: false,
        skip_invalid: false,
        packing: false,
        template: None,
        turns: TurnMode::Auto,
        reasoning_field: None,
        untrained_turns_are_errors: false,
        seed: 1,
    }
}

#[test]
fn text_completion_and_alpaca_masks() {
    let tok = model_tok();
    let eos = tok.eos_token_ids[0];
    let tz = Tokenize {
        tok: &tok,
        template: None,
        train_on_inputs: false,
        end_of_turn: end_of_turn_ids(&tok),
        turns: TurnMode::Auto,
        reasoning_field: None,
    };
    // text: BOS untrained, everything else trained, EOS appended.
    let ex = tz.example(&json!({"text": "Hello, world!"}), Format::Text).unwrap();
    assert_eq!(ex.ids[0], tok.bos_token_id.unwrap());
    assert_eq!(*ex.ids.last().unwrap(), eos);
    assert!(ex.labels[0].is_none() && ex.labels[1..].iter().all(Option::is_some));
    // completion: the prompt's tokens are not trained, the completion's and EOS are.
    let ex = tz
        .example(&json!({"prompt": "Q: capital of France?\nA:", "completion": " Paris."}), Format::Completion)
        .unwrap();
    let prompt_len = tok.encode("Q: capital of France?\nA:", true).unwrap().len();
    assert!(ex.labels[..prompt_len].iter().all(Option::is_none), "prompt untrained");
    let trained: Vec<u32> = ex.labels.iter().flatten().copied().collect();
    assert_eq!(tok.decode(&trained, true).unwrap(), " Paris.");
    assert_eq!(*trained.last().unwrap(), eos);
    // train_on_inputs trains the prompt too.
    let all = Tokenize { train_on_inputs: true, ..tz };
    let ex2 = all
        .example(&json!({"prompt": "Q: capital of France?\nA:", "completion": " Paris."}), Format::Completion)
        .unwrap();
    assert_eq!(ex2.labels.iter().filter(|l| l.is_some()).count(), ex2.ids.len());
    // alpaca without a template: the standard prompt, only the output trained.
    let tz = Tokenize {
        tok: &tok,
        template: None,
        train_on_inputs: false,
        end_of_turn: end_of_turn_ids(&tok),
        turns: TurnMode::Auto,
        reasoning_field: None,
    };
    let ex =
        tz.example(&json!({"instruction": "Name a colour.", "input": "", "output": "Blue."}), Format::Alpaca).unwrap();
    let text = tok.decode(&ex.ids, false).unwrap();
    assert!(text.contains("### Instruction:\nName a colour.\n\n### Response:\nBlue."), "{text}");
    assert!(!text.contains("### Input:"));
    let trained: Vec<u32> = ex.labels.iter().flatten().copied().collect();
    assert_eq!(tok.decode(&trained, true).unwrap(), "Blue.");
    // alpaca with the model's chat template: rendered as a conversation, the output trained with <|im_end|>.
    let t = ChatTemplate::new(tok.chat_template.as_deref().unwrap(), None, None, FIXED_DATE_UNIX).unwrap();
    let tz = Tokenize {
        tok: &tok,
        template: Some(&t),
        train_on_inputs: false,
        end_of_turn: end_of_turn_ids(&tok),
        turns: TurnMode::Auto,
        reasoning_field: None,
    };
    let ex = tz
        .example(&json!({"instruction": "Name a colour.", "input": "Sky", "output": "Blue."}), Format::Alpaca)
        .unwrap();
    let text = tok.decode(&ex.ids, false).unwrap();
    assert!(text.starts_with("<|im_start|>user\nName a colour.\n\nSky<|im_end|>"), "{text}");
    let trained: Vec<u32> = ex.labels.iter().flatten().copied().collect();
    assert_eq!(tok.decode(&trained, false).unwrap(), "Blue.<|im_end|>");
}

#[test]
fn format_detection() {
    for (v, f) in [
        (json!({"text": "x"}), Format::Text),
        (json!({"prompt": "a", "completion": "b"}), Format::Completion),
        (json!({"instruction": "a", "output": "b"}), Format::Alpaca),
        (json!({"messages": []}), Format::Chat),
    ] {
        assert_eq!(Format::resolve("auto", Some(&v)).unwrap(), f);
    }
    assert!(Format::resolve("auto", Some(&json!({"question": "?"}))).unwrap_err().contains("cannot detect"));
}

#[test]
fn bad_records_name_file_and_line() {
    let d = temp_dir("bad-data");
    let tok = model_tok();
    let cases = [
        ("a.jsonl", "{\"text\": \"ok\"}\n{not json\n", "a.jsonl:2: not valid JSON"),
        ("b.jsonl", "{\"text\": \"ok\"}\n{\"txt\": \"typo\"}\n", "b.jsonl:2: missing field \"text\""),
        (
            "c.jsonl",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"robot\", \"content\": \"x\"}]}\n",
            "c.jsonl:1: message 1 has unknown role 'robot'",
        ),
        (
            "d.jsonl",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
            "d.jsonl:1: renders to zero trainable tokens",
        ),
        ("e.jsonl", "\n\n", "no usable examples"),
        ("f.jsonl", "{\"text\": \"ok\"}\n\u{0}\u{ff}", "f.jsonl:2:"),
        ("g.json", "{\"text\": \"not an array\"}", "must hold an array of records"),
    ];
    let t = ChatTemplate::new(tok.chat_template.as_deref().unwrap(), None, None, FIXED_DATE_UNIX).unwrap();
    for (name, text, needle) in cases {
        let p = write(&d, name, text);
        let mut o = opts("auto");
        o.template = Some(&t);
        let err = load_examples(&[(p, 1.0)], &o, &tok).unwrap_err().to_string();
        assert!(err.contains(needle), "{name}: expected {needle:?} in {err}");
    }
    // Invalid UTF-8 is reported as such.
    let p = d.join("h.jsonl");
    std::fs::write(&p, b"{\"text\": \"ok\"}\n{\"text\": \"\xff\xfe\"}\n").unwrap();
    let err = load_examples(&[(p, 1.0)], &opts("text"), &tok).unwrap_err().to_string();
    assert!(err.contains("h.jsonl:2: invalid UTF-8"), "{err}");
    // skip_invalid counts instead of failing.
    let p = write(&d, "mixed.jsonl", "{\"text\": \"ok one\"}\n{\"txt\": 1}\nnot json\n{\"text\": \"ok two\"}\n");
    let mut o = opts("text");
    o.skip_invalid = true;
    let (ex, s) = load_examples(&[(p, 1.0)], &o, &tok).unwrap();
    assert_eq!((ex.len(), s.skipped), (2, 2), "{s:?}");
}

#[test]
fn bom_crlf_and_missing_final_newline_are_accepted() {
    let d = temp_dir("crlf");
    let tok = model_tok();
    let p = write(&d, "x.jsonl", "\u{feff}{\"text\": \"one\"}\r\n\r\n{\"text\": \"two\"}");
    let (ex, s) = load_examples(&[(p, 1.0)], &opts("text"), &tok).unwrap();
    assert_eq!(s.examples, 2);
    assert_eq!(tok.decode(&ex[1].ids, true).unwrap(), "two");
    let p = write(&d, "y.json", "[{\"text\": \"one\"}, {\"text\": \"two\"}, {\"text\": \"three\"}]");
    assert_eq!(load_examples(&[(p, 1.0)], &opts("auto"), &tok).unwrap().1.examples, 3);
}

#[test]
fn length_policy_and_weights() {
    let d = temp_dir("policy");
    let tok = model_tok();
    let long = "word ".repeat(100);
    let p = write(&d, "x.jsonl", &format!("{{\"text\": \"short\"}}\n{{\"text\": \"{long}\"}}\n"));
    let mut o = opts("text");
    o.max_seq_len = 16;
    let (ex, s) = load_examples(&[(p.clone(), 1.0)], &o, &tok).unwrap();
    assert_eq!((s.examples, s.truncated, s.dropped), (2, 1, 0));
    assert_eq!(ex[1].ids.len(), 16);
    o.overflow = Overflow::Drop;
    let (ex, s) = load_examples(&[(p.clone(), 1.0)], &o, &tok).unwrap();
    assert_eq!((ex.len(), s.truncated, s.dropped), (1, 0, 1));
    // Weights: 2 repeats, 0.5 keeps half (seeded), 0 removes.
    let q = write(&d, "y.jsonl", &(0..10).map(|i| format!("{{\"text\": \"n {i}\"}}\n")).collect::<String>());
    let n =
        |w: f64| load_examples(&[(p.clone(), 1.0), (q.clone(), w)], &opts("text"), &tok).map(|r| r.0.len()).unwrap();
    assert_eq!((n(1.0), n(2.0), n(0.5), n(0.0)), (12, 22, 7, 2));
}

#[test]
fn packing_gives_the_same_loss_as_separate_examples() {
    let device = default_device();
    let model = CausalLm::load_dir(fixtures().join("models/llama"), &device).unwrap();
    let tok = Tokenizer::load_dir(fixtures().join("models/llama"), &model.config).unwrap();
    let tz = Tokenize {
        tok: &tok,
        template: None,
        train_on_inputs: false,
        end_of_turn: end_of_turn_ids(&tok),
        turns: TurnMode::Auto,
        reasoning_field: None,
    };
    let texts = ["The quick brown fox.", "Hello, world! How are you?", "Merging folds B times A.", "Paris."];
    let examples: Vec<Example> =
        texts.iter().map(|t| tz.example(&json!({ "text": t }), Format::Text).unwrap()).collect();
    let loss = |rows: &[Example]| -> (f64, usize) {
        let refs: Vec<&Example> = rows.iter().collect();
        let (batch, labels) = lora_train::batching::collate(&refs, tok.pad_token_id.unwrap(), tok.padding_left);
        let logits = model.forward(&batch, None).unwrap();
        let (s, n) = lora_core::loss::shifted_cross_entropy_sum(logits, &labels);
        (lora_core::kernels::host::to_f32_vec(s).unwrap()[0] as f64, n)
    };
    let separate = examples.iter().map(|e| loss(std::slice::from_ref(e))).fold((0.0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let padded = loss(&examples);
    // The padding side changes nothing either.
    let refs: Vec<&Example> = examples.iter().collect();
    let (lb, ll) = lora_train::batching::collate(&refs, tok.pad_token_id.unwrap(), !tok.padding_left);
    let (ls, _) = lora_core::loss::shifted_cross_entropy_sum(model.forward(&lb, None).unwrap(), &ll);
    let other_side = lora_core::kernels::host::to_f32_vec(ls).unwrap()[0] as f64;
    assert!((other_side - padded.0).abs() / padded.0 < 1e-4, "left vs right padding: {other_side} vs {}", padded.0);
    let packed_rows = packing::pack(&examples, 24);
    assert!(packed_rows.len() >= 2 && packed_rows.len() < examples.len(), "{} rows", packed_rows.len());
    assert!(
        packed_rows.iter().any(|r| r.segments.as_ref().unwrap().iter().max() > Some(&0)),
        "some row holds two examples"
    );
    let packed = loss(&packed_rows);
    assert_eq!(separate.1, packed.1, "same number of target tokens");
    assert_eq!(separate.1, padded.1);
    assert!((separate.0 - packed.0).abs() / separate.0 < 1e-4, "separate {} packed {}", separate.0, packed.0);
    assert!((separate.0 - padded.0).abs() / separate.0 < 1e-4, "separate {} padded {}", separate.0, padded.0);
}

/// The dry-run warnings fire on the mistakes they name, and only on them.
#[test]
fn preview_warnings_name_untrained_eos_empty_examples_and_partial_targets() {
    use lora_train::data::Example;
    use lora_train::preview::warnings;
    let eos = 9u32;
    // A masked prompt (positions 1-2), an answer (3-4) without EOS.
    let no_eos = Example { ids: vec![1, 5, 6, 7, 8], labels: vec![None, None, None, Some(7), Some(8)], segments: None };
    let with_eos = Example { ids: vec![1, 5, 7, 9], labels: vec![None, None, Some(7), Some(9)], segments: None };
    let nothing = Example { ids: vec![1, 5, 6], labels: vec![None, None, None], segments: None };
    let all = |layers: usize| (0..layers).map(|l| format!("model.layers.{l}.self_attn.q_proj")).collect::<Vec<_>>();

    let w = warnings(&[no_eos.clone()], &[eos], Some(eos), &all(2), &all(2), false);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("no example trains an end-of-sequence token (id 9)") && w[0].contains("pad id equals EOS"),
        "{w:?}"
    );
    assert!(warnings(&[no_eos.clone(), with_eos.clone()], &[eos], None, &all(2), &all(2), false).is_empty());
    // Plain text (nothing masked) without EOS is not a mistake.
    let text = Example { ids: vec![1, 5, 6], labels: vec![Some(1), Some(5), Some(6)], segments: None };
    assert!(warnings(&[text], &[eos], None, &all(2), &all(2), false).is_empty());

    let w = warnings(&[with_eos.clone(), nothing.clone(), nothing], &[eos], None, &all(2), &all(2), false);
    assert_eq!(w, vec!["2 of 3 examples have no trained token (the first is example 2): they cost time and teach nothing; check the prompt/answer masking and max_seq_len".to_string()]);

    let w = warnings(&[with_eos.clone()], &[eos], None, &all(1), &all(4), false);
    assert_eq!(
        w,
        vec!["target 'q_proj' matches 1 of the model's 4 layers; list it by name to cover every layer".to_string()]
    );
    // Layers chosen on purpose ([lora] layers) are not warned about.
    assert!(warnings(&[with_eos.clone()], &[eos], None, &all(1), &all(4), true).is_empty());

    // A hybrid model (Qwen3.5): Gated DeltaNet projections exist in layers 0-2 only, attention in 3.
    // all-linear covers each name wherever it exists: no warning; a projection left out of one of its
    // layers is still named.
    let module = |l: usize, m: &str| format!("model.layers.{l}.{m}");
    let mut hybrid: Vec<String> = (0..3).map(|l| module(l, "linear_attn.in_proj_a")).collect();
    hybrid.push(module(3, "self_attn.q_proj"));
    hybrid.extend((0..4).map(|l| module(l, "mlp.down_proj")));
    assert!(warnings(&[with_eos.clone()], &[eos], None, &hybrid, &hybrid, false).is_empty());
    let missing_one: Vec<String> = hybrid.iter().filter(|p| !p.starts_with("model.layers.2.")).cloned().collect();
    let w = warnings(&[with_eos], &[eos], None, &missing_one, &hybrid, false);
    assert_eq!(
        w,
        vec![
            "target 'down_proj' matches 3 of the model's 4 layers; list it by name to cover every layer".to_string(),
            "target 'in_proj_a' matches 2 of the 3 layers that have one; list it by name to cover every layer"
                .to_string(),
        ]
    );
}
