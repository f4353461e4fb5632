//! What a run will train on, shown before it runs (`lora train RECIPE --dry-run --show N`): examples
//! rendered with their trained tokens marked, and warnings for the masking mistakes that otherwise
//! go unnoticed until the model misbehaves (an EOS that is never learned, examples with nothing to
//! learn, adapters on only some layers).

use std::collections::{BTreeMap, BTreeSet};

use lora_core::Tokenizer;

use crate::data::Example;
use crate::data::chat_template::ChatTemplate;
use crate::error::Result;

/// How trained tokens are marked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marks {
    /// `[[trained text]]`, for logs and pipes.
    Brackets,
    /// Trained text in green, the rest dimmed (a terminal).
    Color,
}

/// Example `ex` as text, trained spans marked. A position is trained when it carries a label
/// (the loss predicts it from the position before); special tokens are shown, since a missing or
/// untrained EOS is what this is for.
pub fn render_example(tok: &Tokenizer, ex: &Example, marks: Marks) -> Result<String> {
    let mut out = String::new();
    let mut start = 0;
    while start < ex.ids.len() {
        let trained = is_trained(ex, start);
        let mut end = start + 1;
        while end < ex.ids.len() && is_trained(ex, end) == trained {
            end += 1;
        }
        let text = tok.decode(&ex.ids[start..end], false)?;
        match (marks, trained) {
            (Marks::Brackets, true) => out.push_str(&format!("[[{text}]]")),
            (Marks::Color, true) => out.push_str(&format!("\x1b[1;32m{text}\x1b[0m")),
            (Marks::Color, false) => out.push_str(&format!("\x1b[2m{text}\x1b[0m")),
            (Marks::Brackets, false) => out.push_str(&text),
        }
        start = end;
    }
    Ok(out)
}

fn is_trained(ex: &Example, p: usize) -> bool {
    p > 0 && ex.labels[p].is_some()
}

/// Warnings about the training data and the adapter placement.
///
/// - `eos_ids`: the model's end-of-sequence ids; a run with masked prompts (instruction, chat)
///   that never trains one gives a model that does not stop (unsloth #416).
/// - `targets`: the module paths that got adapters; `modules`: every linear module path of the
///   model (a target is compared with the layers that have a module of its name: a Gated DeltaNet
///   projection of a hybrid model is in its Gated DeltaNet layers only); `layers_chosen`: whether
///   the recipe picked layers on purpose (`[lora] layers`).
pub fn warnings(
    examples: &[Example],
    eos_ids: &[u32],
    pad_id: Option<u32>,
    targets: &[String],
    modules: &[String],
    layers_chosen: bool,
) -> Vec<String> {
    let mut w = Vec::new();
    // Only where prompts are masked (instruction and chat data): plain text is trained whole and
    // often has no EOS at all.
    let masked = examples.iter().any(|ex| (1..ex.ids.len()).any(|p| !is_trained(ex, p)));
    let eos_trained =
        examples.iter().any(|ex| (1..ex.ids.len()).any(|p| is_trained(ex, p) && eos_ids.contains(&ex.ids[p])));
    if masked && !eos_ids.is_empty() && !eos_trained {
        let mut msg = format!(
            "no example trains an end-of-sequence token (id {}): the model will not learn to stop; \
             end each trained answer with EOS (the chat template's end-of-turn token)",
            eos_ids.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
        );
        if pad_id.is_some_and(|p| eos_ids.contains(&p)) {
            msg.push_str(
                ", and note that the pad id equals EOS: tools that mask labels by the pad id mask EOS too \
                 (lora masks padding by position)",
            );
        }
        w.push(msg);
    }
    let empty: Vec<usize> =
        examples.iter().enumerate().filter(|(_, ex)| ex.trained_tokens() == 0).map(|(i, _)| i).collect();
    if let Some(first) = empty.first() {
        w.push(format!(
            "{} of {} examples have no trained token (the first is example {}): they cost time and teach nothing; \
             check the prompt/answer masking and max_seq_len",
            empty.len(),
            examples.len(),
            first + 1
        ));
    }
    if !layers_chosen {
        // module name (q_proj, ...) -> the layers holding one, and those whose one got an adapter
        let per_name = |paths: &[String]| {
            let mut out: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
            for p in paths {
                if let (Some(layer), Some(name)) = (lora_core::network::config::layer_index(p), p.rsplit('.').next()) {
                    out.entry(name.to_string()).or_default().insert(layer);
                }
            }
            out
        };
        let (have, chosen) = (per_name(modules), per_name(targets));
        let layers = have.values().flatten().collect::<BTreeSet<_>>().len();
        for (name, in_layers) in &chosen {
            let n = in_layers.len();
            let of = have.get(name).map_or(n, BTreeSet::len);
            if n < of {
                let which = if of == layers {
                    format!("the model's {layers} layers")
                } else {
                    format!("the {of} layers that have one")
                };
                w.push(format!("target '{name}' matches {n} of {which}; list it by name to cover every layer"));
            }
        }
    }
    w
}

/// Where the recipe's chat template (`ours`) and the model's own (`own`) render the same probe
/// conversation differently, as a warning; `None` when they agree. The probe has a system turn
/// and two exchanges; a template that refuses the system turn is compared without it.
pub fn template_difference(ours: &ChatTemplate, own: &ChatTemplate) -> Option<String> {
    let turn = |role: &str, content: &str| serde_json::json!({ "role": role, "content": content });
    let probe = [
        turn("system", "You are helpful."),
        turn("user", "Hello?"),
        turn("assistant", "Hi."),
        turn("user", "Bye?"),
        turn("assistant", "Bye."),
    ];
    let render = |t: &ChatTemplate| t.render(&probe, false).or_else(|_| t.render(&probe[1..], false));
    let (a, b) = (render(ours).ok()?, render(own).ok()?);
    if a == b {
        return None;
    }
    let at =
        a.char_indices().zip(b.chars()).find(|((_, x), y)| x != y).map(|((i, _), _)| i).unwrap_or(a.len().min(b.len()));
    let start = a[..at].char_indices().rev().nth(15).map(|(i, _)| i).unwrap_or(0);
    let snippet = |s: &str| s.get(start..).unwrap_or("").chars().take(40).collect::<String>();
    Some(format!(
        "data.chat_template renders a conversation differently from the model's own chat template \
         (from byte {at}: {:?} here, {:?} in the model's); the adapter learns this format, so prompts at \
         inference must use it too (lora generate, llama.cpp and Ollama use the model's)",
        snippet(&a),
        snippet(&b)
    ))
}
