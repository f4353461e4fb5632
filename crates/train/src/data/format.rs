//! Record formats and their tokenization into examples with exact loss masks.
//!
//! - `text`: `{"text"}`; every token is trained on, EOS appended.
//! - `completion`: `{"prompt", "completion"}`; only the completion (and EOS).
//! - `alpaca`: `{"instruction", "input"?, "output", "system"?}`; rendered with the model's chat template
//!   when it has one, else with the Alpaca prompt; only the output.
//! - `chat`: `{"messages": [{"role", "content"}]}`; rendered with the chat template; by default only
//!   assistant turns, each with its end-of-turn token.
//!
//! The full text is tokenized once and labels come from token offsets, so that a mask never
//! depends on how a piece would tokenize on its own.

use std::ops::Range;

use lora_core::Tokenizer;
use serde_json::{Value, json};

use super::Example;
use super::chat_template::ChatTemplate;
use super::turns::{TurnMode, render_turns};

/// Record format of a data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{"text": ...}`.
    Text,
    /// `{"prompt": ..., "completion": ...}`.
    Completion,
    /// `{"instruction", "input", "output", "system"}`.
    Alpaca,
    /// `{"messages": [...]}`.
    Chat,
}

impl Format {
    /// Parses the recipe's `format`; `auto` looks at the fields of the first record.
    pub fn resolve(name: &str, first: Option<&Value>) -> Result<Self, String> {
        match name {
            "text" => Ok(Self::Text),
            "completion" => Ok(Self::Completion),
            "alpaca" => Ok(Self::Alpaca),
            "chat" => Ok(Self::Chat),
            "auto" => {
                let v = first.ok_or("no records")?;
                if v.get("messages").is_some() {
                    Ok(Self::Chat)
                } else if v.get("instruction").is_some() && v.get("output").is_some() {
                    Ok(Self::Alpaca)
                } else if v.get("prompt").is_some() && v.get("completion").is_some() {
                    Ok(Self::Completion)
                } else if v.get("text").is_some() {
                    Ok(Self::Text)
                } else if v.get("chosen").is_some() && v.get("rejected").is_some() {
                    Err("the records are preference pairs (\"chosen\", \"rejected\"): train on them with [train] method = \"dpo\"".into())
                } else {
                    Err("cannot detect the format from the first record: expected \"messages\", \"instruction\"+\"output\", \
                         \"prompt\"+\"completion\" or \"text\"; set [data] format"
                        .into())
                }
            }
            "preference" => Err("format \"preference\" needs [train] method = \"dpo\"".into()),
            other => Err(format!("unknown format '{other}'; expected auto, text, completion, alpaca or chat")),
        }
    }
}

const ALPACA_WITH_INPUT: &str = "Below is an instruction that describes a task, paired with an input that provides further context. \
Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n";
const ALPACA_NO_INPUT: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the \
request.\n\n### Instruction:\n{instruction}\n\n### Response:\n";

/// Turns records into examples.
pub struct Tokenize<'a> {
    /// The tokenizer.
    pub tok: &'a Tokenizer,
    /// The chat template, when the model (or the recipe) has one.
    pub template: Option<&'a ChatTemplate>,
    /// Train on every token, prompts included.
    pub train_on_inputs: bool,
    /// Token ids that end an assistant turn.
    pub end_of_turn: Vec<u32>,
    /// How a conversation's assistant turns become examples.
    pub turns: TurnMode,
    /// A dataset's own name for assistant messages' reasoning (`reasoning`, `thinking`), read as
    /// `reasoning_content` (what Qwen3 / DeepSeek-R1 templates render).
    pub reasoning_field: Option<&'a str>,
}

/// An example and the assistant turns it was made to train.
#[derive(Debug, Clone)]
pub struct Tokenized {
    /// The example.
    pub example: Example,
    /// Each assistant turn it trains: the message index and the first trained token (`None`: the
    /// turn renders to no trainable token).
    pub turns: Vec<(usize, Option<usize>)>,
    /// Whether the record was expanded into one example per assistant turn.
    pub expanded: bool,
}

fn string_field<'v>(v: &'v Value, key: &str) -> Result<&'v str, String> {
    match v.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("field \"{key}\" must be a string")),
        None => Err(format!("missing field \"{key}\"")),
    }
}

impl Tokenize<'_> {
    /// Tokenizes one record into its first example (the only one, unless a conversation is
    /// expanded); the error is the reason, without the location.
    pub fn example(&self, v: &Value, format: Format) -> Result<Example, String> {
        Ok(self.examples(v, format)?.remove(0).example)
    }

    /// Tokenizes one record: one example, or one per assistant turn of an expanded conversation.
    pub fn examples(&self, v: &Value, format: Format) -> Result<Vec<Tokenized>, String> {
        let one = |example: Example| Ok(vec![Tokenized { example, turns: Vec::new(), expanded: false }]);
        if !v.is_object() {
            return Err("a record must be a JSON object".into());
        }
        match format {
            Format::Text => one(self.plain(string_field(v, "text")?, 0)?),
            Format::Completion => {
                let (p, c) = (string_field(v, "prompt")?, string_field(v, "completion")?);
                one(self.plain(&format!("{p}{c}"), p.len())?)
            }
            Format::Alpaca => {
                let instruction = string_field(v, "instruction")?;
                let output = string_field(v, "output")?;
                let input = match v.get("input") {
                    None | Some(Value::Null) => "",
                    Some(Value::String(s)) => s,
                    Some(_) => return Err("field \"input\" must be a string".into()),
                };
                match self.template {
                    Some(_) => {
                        let user = if input.is_empty() {
                            instruction.to_string()
                        } else {
                            format!("{instruction}\n\n{input}")
                        };
                        let mut messages = Vec::new();
                        if let Some(Value::String(system)) = v.get("system") {
                            messages.push(json!({"role": "system", "content": system}));
                        }
                        messages.push(json!({"role": "user", "content": user}));
                        messages.push(json!({"role": "assistant", "content": output}));
                        self.chat(&messages, None)
                    }
                    None => {
                        let prompt = if input.is_empty() {
                            ALPACA_NO_INPUT.replace("{instruction}", instruction)
                        } else {
                            ALPACA_WITH_INPUT.replace("{instruction}", instruction).replace("{input}", input)
                        };
                        let system = match v.get("system") {
                            Some(Value::String(s)) if !s.is_empty() => format!("{s}\n\n"),
                            _ => String::new(),
                        };
                        let prompt = format!("{system}{prompt}");
                        one(self.plain(&format!("{prompt}{output}"), prompt.len())?)
                    }
                }
            }
            Format::Chat => {
                let Some(Value::Array(messages)) = v.get("messages") else {
                    return Err("missing array field \"messages\"".into());
                };
                for (i, m) in messages.iter().enumerate() {
                    let role =
                        m.get("role").and_then(Value::as_str).ok_or(format!("message {i} has no string \"role\""))?;
                    if !["system", "user", "assistant", "tool"].contains(&role) {
                        return Err(format!(
                            "message {i} has unknown role '{role}' (expected system, user, assistant or tool)"
                        ));
                    }
                    match m.get("content") {
                        Some(Value::String(_)) => {}
                        Some(Value::Null) | None if role == "assistant" && m.get("tool_calls").is_some() => {}
                        _ => return Err(format!("message {i} has no string \"content\"")),
                    }
                }
                if messages.is_empty() {
                    return Err("\"messages\" is empty".into());
                }
                let tools = v.get("tools").filter(|t| !t.is_null());
                match self.reasoning_field {
                    Some(field) => {
                        let mapped: Vec<Value> = messages
                            .iter()
                            .map(|m| {
                                let mut m = m.clone();
                                if let Some(obj) = m.as_object_mut()
                                    && !obj.contains_key("reasoning_content")
                                    && let Some(r) = obj.remove(field)
                                {
                                    obj.insert("reasoning_content".into(), r);
                                }
                                m
                            })
                            .collect();
                        self.chat(&mapped, tools)
                    }
                    None => self.chat(messages, tools),
                }
            }
        }
    }

    /// Text with the tokenizer's special tokens (BOS) and EOS appended; trained from byte `from` on.
    fn plain(&self, text: &str, from: usize) -> Result<Example, String> {
        let enc = self.tok.inner().encode(text, true).map_err(|e| e.to_string())?;
        let mut ids = enc.get_ids().to_vec();
        let offsets = enc.get_offsets();
        let special = enc.get_special_tokens_mask();
        // Trained: tokens of the text (not added special tokens) that start at or after `from`.
        let mut labels: Vec<Option<u32>> = ids
            .iter()
            .zip(offsets)
            .zip(special)
            .map(|((&id, &(s, e)), &sp)| (self.train_on_inputs || (sp == 0 && s >= from && e > s)).then_some(id))
            .collect();
        // End with EOS so that the model learns where an answer stops.
        if let Some(&eos) = self.tok.eos_token_ids.first()
            && ids.last() != Some(&eos)
        {
            ids.push(eos);
            labels.push(Some(eos));
        }
        Ok(Example { ids, labels, segments: None })
    }

    /// A conversation rendered by the template into its examples (one, or one per assistant turn:
    /// [`TurnMode`]); the assistant turns each trains, with their end-of-turn token, trained.
    fn chat(&self, messages: &[Value], tools: Option<&Value>) -> Result<Vec<Tokenized>, String> {
        let template = self.template.ok_or(
            "the model has no chat template (tokenizer_config.json chat_template or chat_template.jinja); \
             set [data] chat_template or use another format",
        )?;
        let rendered = render_turns(template, messages, tools, self.turns)?;
        let expanded = rendered.mode == TurnMode::Expand;
        rendered
            .examples
            .into_iter()
            .map(|ex| {
                // The template writes BOS itself; add no special tokens (as apply_chat_template does).
                let enc = self.tok.inner().encode(ex.text.as_str(), false).map_err(|e| e.to_string())?;
                let ids = enc.get_ids().to_vec();
                let spans: Vec<Range<usize>> = ex.turns.iter().map(|t| t.span.clone()).collect();
                let (labels, firsts) =
                    turn_labels(&ids, enc.get_offsets(), &spans, &self.end_of_turn, self.train_on_inputs);
                let turns = ex.turns.iter().map(|t| t.message).zip(firsts).collect();
                Ok(Tokenized { example: Example { ids, labels, segments: None }, turns, expanded })
            })
            .collect()
    }
}

/// Labels from assistant byte spans: a token is trained when it starts inside a span, up to and
/// including the first end-of-turn token of that span (so a newline or the next turn's header that
/// a template glues to the turn is not trained on).
pub fn assistant_labels(
    ids: &[u32],
    offsets: &[(usize, usize)],
    spans: &[Range<usize>],
    end_of_turn: &[u32],
    train_on_inputs: bool,
) -> Vec<Option<u32>> {
    turn_labels(ids, offsets, spans, end_of_turn, train_on_inputs).0
}

/// [`assistant_labels`], and for each span the index of its first trained token (`None`: no token
/// starts inside it).
fn turn_labels(
    ids: &[u32],
    offsets: &[(usize, usize)],
    spans: &[Range<usize>],
    end_of_turn: &[u32],
    train_on_inputs: bool,
) -> (Vec<Option<u32>>, Vec<Option<usize>>) {
    let mut labels = if train_on_inputs { ids.iter().map(|&i| Some(i)).collect() } else { vec![None; ids.len()] };
    let mut firsts = Vec::with_capacity(spans.len());
    for span in spans {
        let mut first = None;
        for (k, (&id, &(s, e))) in ids.iter().zip(offsets).enumerate() {
            if s >= span.start && s < span.end && e > s {
                labels[k] = Some(id);
                first.get_or_insert(k);
                if end_of_turn.contains(&id) {
                    break;
                }
            }
        }
        firsts.push(first);
    }
    (labels, firsts)
}
