//! Chat data of thinking models (tests/fixtures/thinking_chat.json, from
//! scripts/make_thinking_chat_fixtures.py: transformers' apply_chat_template with Qwen3's template and a
//! Qwen3.5-style variant): expanded examples render as transformers renders each prefix conversation,
//! every assistant turn is trained, and a turn left untrained is said.

use std::ops::Range;

use lora_core::Tokenizer;
use lora_train::data::chat_template::{ChatTemplate, FIXED_DATE_UNIX};
use lora_train::data::turns::{TurnMode, render_turns};
use lora_train::data::{DataOptions, Overflow, load_examples};
use serde_json::{Value, json};

use crate::common::*;

fn golden() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("thinking_chat.json")).unwrap()).unwrap()
}

fn template(name: &str, enable_thinking: &Value) -> ChatTemplate {
    let src = std::fs::read_to_string(fixtures().join(format!("chat_templates/{name}.jinja"))).unwrap();
    let t = ChatTemplate::new(&src, None, Some("<|im_end|>".into()), FIXED_DATE_UNIX).unwrap();
    let mut kwargs = serde_json::Map::new();
    if !enable_thinking.is_null() {
        kwargs.insert("enable_thinking".into(), enable_thinking.clone());
    }
    t.with_kwargs(kwargs).unwrap()
}

/// The text of `span` through its first `<|im_end|>`: what the labels train.
fn trained_text(text: &str, span: &Range<usize>) -> String {
    let s = &text[span.clone()];
    s[..s.find("<|im_end|>").map_or(s.len(), |i| i + "<|im_end|>".len())].to_string()
}

#[test]
fn expanded_examples_render_as_transformers_and_train_each_turn() {
    let g = golden();
    let mut checked = 0;
    for case in g["cases"].as_array().unwrap() {
        let conv = &g["conversations"][case["conversation"].as_u64().unwrap() as usize];
        let messages = conv["messages"].as_array().unwrap();
        let tools = conv.get("tools");
        let t = template(case["template"].as_str().unwrap(), &case["enable_thinking"]);
        let what = format!("{} / {} / enable_thinking {}", case["template"], conv["name"], case["enable_thinking"]);
        assert_eq!(t.render_with_tools(messages, tools, false).unwrap(), case["whole"].as_str().unwrap(), "{what}");
        let r = render_turns(&t, messages, tools, TurnMode::Expand).unwrap();
        let want = case["expanded"].as_array().unwrap();
        assert_eq!(r.examples.len(), want.len(), "{what}");
        for (ex, w) in r.examples.iter().zip(want) {
            assert_eq!(ex.text, w["text"].as_str().unwrap(), "{what}: the text of turn {}", w["message"]);
            assert_eq!(ex.turns.len(), 1);
            assert_eq!(ex.turns[0].message as u64, w["message"].as_u64().unwrap());
            let got = trained_text(&ex.text, &ex.turns[0].span);
            assert_eq!(got, w["trained"].as_str().unwrap(), "{what}: the trained text of turn {}", w["message"]);
            checked += 1;
        }
        // Qwen3's templates rewrite an assistant turn followed by a user query (not a tool
        // response): auto expands those conversations and keeps the others whole.
        let whole = case["whole"].as_str().unwrap();
        let rewrites = want.iter().any(|w| !whole.starts_with(w["text"].as_str().unwrap()));
        let auto = render_turns(&t, messages, tools, TurnMode::Auto).unwrap();
        assert_eq!(auto.rewrites_history, rewrites, "{what}");
        assert_eq!(auto.mode, if rewrites { TurnMode::Expand } else { TurnMode::All }, "{what}");
        if conv["name"] == "two turns with reasoning_content" {
            assert!(rewrites, "the reported case rewrites history");
        }
    }
    assert!(checked >= 30, "{checked}");
}

/// The reported bug: under Qwen3's template the first of two assistant turns got an empty span in
/// the whole conversation. In `all` mode it is now trained as the whole render shows it (without
/// its reasoning); `last` trains only the final turn.
#[test]
fn all_trains_every_turn_of_the_whole_render_and_last_only_the_final() {
    let g = golden();
    let conv = &g["conversations"][0];
    let messages = conv["messages"].as_array().unwrap();
    let t = template("qwen3", &Value::Null);
    let all = render_turns(&t, messages, None, TurnMode::All).unwrap();
    assert_eq!(all.examples.len(), 1);
    let ex = &all.examples[0];
    let turns: Vec<String> = ex.turns.iter().map(|s| trained_text(&ex.text, &s.span)).collect();
    assert_eq!(turns, ["4<|im_end|>", "<think>\nThree and three make six.\n</think>\n\n6<|im_end|>"]);
    let last = render_turns(&t, messages, None, TurnMode::Last).unwrap();
    assert_eq!(last.examples[0].turns.len(), 1);
    assert_eq!(last.examples[0].turns[0].message, 3);
}

fn write_jsonl(name: &str, lines: &[Value]) -> std::path::PathBuf {
    let dir = temp_dir(name);
    let path = dir.join("data.jsonl");
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&path, text.join("\n")).unwrap();
    path
}

fn opts<'a>(t: &'a ChatTemplate, max_seq_len: usize, turns: TurnMode) -> DataOptions<'a> {
    DataOptions {
        format: "chat",
        max_seq_len,
        overflow: Overflow::Truncate,
        train_on_inputs: false,
        skip_invalid: false,
        packing: false,
        template: Some(t),
        turns,
        reasoning_field: None,
        untrained_turns_are_errors: false,
        seed: 0,
    }
}

#[test]
fn expanded_conversations_are_counted_and_untrained_turns_said() {
    let tok = Tokenizer::load_standalone(fixtures().join("chat_tokenizer")).unwrap();
    let g = golden();
    let conv = json!({"messages": g["conversations"][0]["messages"]});
    let t = template("qwen3", &Value::Null);
    let path = write_jsonl("thinking-data", &[conv.clone(), conv.clone()]);
    let (examples, s) = load_examples(&[(path.clone(), 1.0)], &opts(&t, 512, TurnMode::Auto), &tok).unwrap();
    assert_eq!((examples.len(), s.expanded, s.untrained_turns), (4, 2, 0), "two conversations, two turns each");
    // Every expanded example trains its turn through <|im_end|>, and nothing else.
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    for ex in &examples {
        let trained: Vec<u32> = ex.labels.iter().flatten().copied().collect();
        assert_eq!(trained.last(), Some(&im_end));
        assert_eq!(trained.iter().filter(|&&i| i == im_end).count(), 1);
    }
    // The same conversations in `all`: one example each, both turns trained.
    let (examples, s) = load_examples(&[(path.clone(), 1.0)], &opts(&t, 512, TurnMode::All), &tok).unwrap();
    assert_eq!((examples.len(), s.expanded, s.untrained_turns), (2, 0, 0));
    assert_eq!(examples[0].labels.iter().flatten().filter(|&&i| i == im_end).count(), 2);

    // A max_seq_len that cuts the second turn's example before its turn: said once for the file,
    // with the line and the message; an error when the recipe asks.
    let first_len = examples[0].ids.len().min(40);
    let (_, s) = load_examples(&[(path.clone(), 1.0)], &opts(&t, first_len, TurnMode::Expand), &tok).unwrap();
    assert_eq!(s.untrained_turns, 2, "{s:?}");
    assert_eq!(s.untrained_warnings.len(), 1, "{:?}", s.untrained_warnings);
    let w = &s.untrained_warnings[0];
    assert!(
        w.contains("2 assistant turn(s)") && w.contains("line 1, message 3") && w.contains("truncated away"),
        "{w}"
    );
    let strict = DataOptions { untrained_turns_are_errors: true, ..opts(&t, first_len, TurnMode::Expand) };
    let err = load_examples(&[(path, 1.0)], &strict, &tok).unwrap_err().to_string();
    assert!(err.contains("untrained_turns = \"error\""), "{err}");
}

#[test]
fn a_dataset_s_own_reasoning_field_is_read_as_reasoning_content() {
    let tok = Tokenizer::load_standalone(fixtures().join("chat_tokenizer")).unwrap();
    let g = golden();
    let original = g["conversations"][0]["messages"].clone();
    let renamed: Vec<Value> = original
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if let Some(r) = m.as_object_mut().unwrap().remove("reasoning_content") {
                m["thinking"] = r;
            }
            m
        })
        .collect();
    let t = template("qwen3", &Value::Null);
    let a = write_jsonl("reasoning-a", &[json!({"messages": original})]);
    let b = write_jsonl("reasoning-b", &[json!({"messages": renamed})]);
    let (want, _) = load_examples(&[(a, 1.0)], &opts(&t, 512, TurnMode::Auto), &tok).unwrap();
    let (without, _) = load_examples(&[(b.clone(), 1.0)], &opts(&t, 512, TurnMode::Auto), &tok).unwrap();
    assert_ne!(without, want, "unmapped, the reasoning is not rendered");
    let mapped = DataOptions { reasoning_field: Some("thinking"), ..opts(&t, 512, TurnMode::Auto) };
    let (got, _) = load_examples(&[(b, 1.0)], &mapped, &tok).unwrap();
    assert_eq!(got, want);
}
