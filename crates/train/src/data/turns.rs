//! Which assistant turns a conversation trains, and in which render.
//!
//! Reasoning models' templates (Qwen3, Qwen3.5) rewrite history: an assistant turn after the last
//! user message keeps its reasoning (`<think>…</think>`, or an empty think block), earlier ones are
//! rendered without it. So a turn renders one way when the conversation ends with it (what the model
//! sees when it generates that turn) and another inside the whole conversation. The modes:
//!
//! - `expand`: each assistant turn is its own example, the conversation up to and including it, as
//!   the template renders it at that point; only that turn is trained. Matches inference exactly.
//! - `all`: the whole conversation once, every assistant turn trained as rendered there (earlier
//!   turns without their reasoning).
//! - `last`: the whole conversation, only its final assistant turn trained.
//! - `auto` (default): `expand` for a conversation whose template rewrites history (some assistant
//!   turn's render as the last message parts from the whole render at the turn's first character),
//!   `all` otherwise.
//!
//! A turn's span starts where `render(messages[..i], add_generation_prompt)` ends (or, where the
//! generation prompt itself differs, as with `enable_thinking=false`'s empty think block, where the
//! two renders part) and runs to where the turn's render stops agreeing with the example's text.

use std::ops::Range;

use serde_json::Value;

use super::chat_template::ChatTemplate;

/// How a conversation's assistant turns become examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnMode {
    /// `expand` when the template rewrites history, `all` otherwise.
    Auto,
    /// One example per assistant turn, as rendered when the conversation ends with it.
    Expand,
    /// Every assistant turn of the whole conversation.
    All,
    /// Only the final assistant turn.
    Last,
}

impl TurnMode {
    /// The recipe's spelling: `auto`, `expand`, `all` or `last`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "expand" => Ok(Self::Expand),
            "all" => Ok(Self::All),
            "last" => Ok(Self::Last),
            other => Err(format!("'{other}' is not a turn mode; use auto, expand, all or last")),
        }
    }

    /// The recipe's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Expand => "expand",
            Self::All => "all",
            Self::Last => "last",
        }
    }
}

/// An assistant turn trained by an example: its message index and byte span in the example's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnSpan {
    /// Index of the assistant message in the conversation.
    pub message: usize,
    /// Bytes of the example's text that belong to the turn.
    pub span: Range<usize>,
}

/// One rendered example of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedExample {
    /// The text, as the template renders it.
    pub text: String,
    /// The turns it trains.
    pub turns: Vec<TurnSpan>,
}

/// A conversation's examples and how they were made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedConversation {
    /// The examples (one, or one per assistant turn when expanded).
    pub examples: Vec<RenderedExample>,
    /// Whether the template renders some assistant turn differently inside the whole conversation
    /// than when the conversation ends with it.
    pub rewrites_history: bool,
    /// The mode applied (`auto` resolved).
    pub mode: TurnMode,
}

/// Renders `messages` (with the conversation's `tools`, when it has any) into examples under `mode`.
pub fn render_turns(
    t: &ChatTemplate,
    messages: &[Value],
    tools: Option<&Value>,
    mode: TurnMode,
) -> Result<RenderedConversation, String> {
    let t = &Renderer { t, tools };
    let assistants: Vec<usize> = messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.get("role").and_then(Value::as_str) == Some("assistant"))
        .map(|(i, _)| i)
        .collect();
    let full = t.render(messages, false)?;
    let mut ends_alone = Vec::with_capacity(assistants.len());
    let mut rewrites_history = false;
    for &i in &assistants {
        let upto = t.render(&messages[..=i], false)?;
        // The turn renders differently from its first character on when the conversation ends with
        // it (reasoning kept, or an empty think block added) than inside the whole conversation.
        rewrites_history |= common_prefix(&upto, &full) <= turn_start(t, messages, i, &full)?;
        ends_alone.push(upto);
    }
    let mode = match mode {
        TurnMode::Auto if rewrites_history => TurnMode::Expand,
        TurnMode::Auto => TurnMode::All,
        m => m,
    };
    let examples = match mode {
        TurnMode::Expand => assistants
            .iter()
            .zip(ends_alone)
            .map(|(&i, text)| {
                let start = turn_start(t, messages, i, &text)?;
                let span = start..text.len();
                Ok(RenderedExample { text, turns: vec![TurnSpan { message: i, span }] })
            })
            .collect::<Result<Vec<_>, String>>()?,
        _ => {
            let chosen = if mode == TurnMode::Last {
                &assistants[assistants.len().saturating_sub(1)..]
            } else {
                &assistants[..]
            };
            let mut turns = Vec::new();
            for &i in chosen {
                let start = turn_start(t, messages, i, &full)?;
                let end = turn_end(t, messages, i, &full)?;
                turns.push(TurnSpan { message: i, span: start..end.max(start) });
            }
            vec![RenderedExample { text: full, turns }]
        }
    };
    Ok(RenderedConversation { examples, rewrites_history, mode })
}

/// Where assistant turn `i` starts in `text` (a render of a conversation containing it): after
/// `render(messages[..i], add_generation_prompt)`, or, where the generation prompt is not what the
/// turn is rendered with, where the two part (never before `render(messages[..i])` ends).
fn turn_start(t: &Renderer<'_>, messages: &[Value], i: usize, text: &str) -> Result<usize, String> {
    if i == 0 {
        return Ok(0);
    }
    let pre = t.render(&messages[..i], true)?;
    if text.starts_with(pre.as_str()) {
        return Ok(pre.len());
    }
    let before = t.render(&messages[..i], false)?;
    if !text.starts_with(before.as_str()) {
        return Err(format!(
            "the chat template is not incremental: the conversation up to message {i} does not render as a \
             prefix of the conversation containing it, so assistant tokens cannot be located exactly"
        ));
    }
    Ok(common_prefix(&pre, text).max(before.len()))
}

/// Where assistant turn `i` ends in the whole conversation's render `full`: where
/// `render(messages[..=i])` stops agreeing with it; when the template renders the turn differently
/// from its first character as the last message (history rewriting), where
/// `render(messages[..=i + 1])` does (the labels stop at the turn's end-of-turn token).
fn turn_end(t: &Renderer<'_>, messages: &[Value], i: usize, full: &str) -> Result<usize, String> {
    let upto = t.render(&messages[..=i], false)?;
    let end = common_prefix(&upto, full);
    if end > turn_start(t, messages, i, full)? || i + 1 >= messages.len() {
        return Ok(end);
    }
    let next = t.render(&messages[..=i + 1], false)?;
    Ok(common_prefix(&next, full))
}

impl ChatTemplate {
    /// The whole conversation and the byte ranges of its assistant turns, each as rendered there
    /// (the `all` mode).
    pub fn render_with_assistant_spans(&self, messages: &[Value]) -> Result<(String, Vec<Range<usize>>), String> {
        let mut rendered = render_turns(self, messages, None, TurnMode::All)?;
        let ex = rendered.examples.remove(0);
        let spans = ex.turns.into_iter().map(|t| t.span).filter(|s| !s.is_empty()).collect();
        Ok((ex.text, spans))
    }
}

/// A template with the conversation's tools.
struct Renderer<'a> {
    t: &'a ChatTemplate,
    tools: Option<&'a Value>,
}

impl Renderer<'_> {
    fn render(&self, messages: &[Value], add_generation_prompt: bool) -> Result<String, String> {
        self.t.render_with_tools(messages, self.tools, add_generation_prompt)
    }
}

/// Length in bytes of the longest common prefix, on a char boundary.
pub fn common_prefix(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .take_while(|((_, x), y)| x == y)
        .map(|((i, x), _)| i + x.len_utf8())
        .last()
        .unwrap_or(0)
}
