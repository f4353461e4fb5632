//! The Hugging Face access token: `HF_TOKEN`, else the token file that `huggingface-cli login`
//! writes (`$HF_HOME/token`, default `~/.cache/huggingface/token`).
//!
//! The value is kept inside a type whose `Debug` and `Display` print a placeholder, so that no
//! error, log line or report of ours can carry it by accident; it is read out only where the
//! `Authorization` header for the configured endpoint is built.

use std::fmt;
use std::path::Path;

/// A secret token; prints as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token value; empty or whitespace-only values are no token.
    pub fn new(value: &str) -> Option<Token> {
        let v = value.trim();
        (!v.is_empty()).then(|| Token(v.to_string()))
    }

    /// `HF_TOKEN` if set and non-empty, else the first line of `token_file`, if any.
    pub fn from_env_or_file(token_file: &Path) -> Option<Token> {
        if let Some(t) = std::env::var("HF_TOKEN").ok().and_then(|v| Token::new(&v)) {
            return Some(t);
        }
        let text = std::fs::read_to_string(token_file).ok()?;
        Token::new(text.lines().next().unwrap_or(""))
    }

    /// The value itself, for hf-hub's client, which builds the `Authorization` header for the
    /// configured endpoint only (and reqwest drops it on a redirect to another host).
    pub(crate) fn secret(&self) -> &str {
        &self.0
    }

    /// The `Authorization` header value. Only `http::Client` calls this, and only for URLs on the
    /// configured endpoint.
    pub(crate) fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}
