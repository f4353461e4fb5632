//! The tokenizer of a model folder: `tokenizer.json` through the `tokenizers` crate, with the special
//! ids and chat template gathered from `config.json`, `generation_config.json` and
//! `tokenizer_config.json` the way transformers resolves them.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::Value;

use crate::error::{CoreError, Result};
use crate::network::config::{ModelConfig, TokenIds};

/// A loaded tokenizer with its special tokens.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    /// Beginning-of-sequence id.
    pub bos_token_id: Option<u32>,
    /// Ids that end generation (generation_config.json, else config.json, else tokenizer_config.json).
    pub eos_token_ids: Vec<u32>,
    /// Padding id (tokenizer_config.json, else config.json, else the first EOS id).
    pub pad_token_id: Option<u32>,
    /// The Jinja chat template (`chat_template` of tokenizer_config.json, or `chat_template.jinja`).
    pub chat_template: Option<String>,
    /// `padding_side: "left"` in tokenizer_config.json.
    pub padding_left: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("bos_token_id", &self.bos_token_id)
            .field("eos_token_ids", &self.eos_token_ids)
            .field("pad_token_id", &self.pad_token_id)
            .finish()
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| CoreError::io(path, e))?;
    serde_json::from_str(&text).map(Some).map_err(|e| CoreError::json(&path, e))
}

/// A special token in tokenizer_config.json: a string or `{"content": ...}`.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn ids_field(v: Option<&Value>) -> Vec<u32> {
    v.and_then(|v| serde_json::from_value::<TokenIds>(v.clone()).ok()).map(|t| t.to_vec()).unwrap_or_default()
}

impl Tokenizer {
    /// Loads the tokenizer of a model folder.
    pub fn load_dir(dir: impl AsRef<Path>, config: &ModelConfig) -> Result<Self> {
        Self::load(dir.as_ref(), Some(config))
    }

    /// Loads `tokenizer.json` (and `tokenizer_config.json`, `generation_config.json` beside it) from a
    /// folder that holds no model.
    pub fn load_standalone(dir: impl AsRef<Path>) -> Result<Self> {
        Self::load(dir.as_ref(), None)
    }

    fn load(dir: &Path, config: Option<&ModelConfig>) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(CoreError::Tokenizer {
                path,
                message: "not found; lora needs a tokenizer.json (the fast-tokenizer file)".into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| CoreError::Tokenizer { path: path.clone(), message: e.to_string() })?;
        let tok_cfg = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
        let gen_cfg = read_json(&dir.join("generation_config.json"))?.unwrap_or(Value::Null);
        let id_of = |key: &str| token_string(tok_cfg.get(key)).and_then(|t| inner.token_to_id(&t));

        let bos_token_id = ids_field(gen_cfg.get("bos_token_id"))
            .first()
            .copied()
            .or(config.and_then(|c| c.bos_token_id))
            .or(id_of("bos_token"));
        let mut eos_token_ids = ids_field(gen_cfg.get("eos_token_id"));
        if eos_token_ids.is_empty() {
            eos_token_ids = config.map(|c| c.eos_token_ids.clone()).unwrap_or_default();
        }
        if eos_token_ids.is_empty() {
            eos_token_ids.extend(id_of("eos_token"));
        }
        let pad_token_id = id_of("pad_token")
            .or(config.and_then(|c| c.pad_token_id))
            .or(ids_field(gen_cfg.get("pad_token_id")).first().copied())
            .or(eos_token_ids.first().copied());
        let chat_template = match tok_cfg.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // A list of named templates: the one called "default".
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Value::as_str))
                .map(str::to_string),
            _ => None,
        };
        let chat_template = match chat_template {
            Some(t) => Some(t),
            None => {
                let jinja = dir.join("chat_template.jinja");
                if jinja.is_file() {
                    Some(std::fs::read_to_string(&jinja).map_err(|e| CoreError::io(&jinja, e))?)
                } else {
                    None
                }
            }
        };
        let padding_left = tok_cfg.get("padding_side").and_then(Value::as_str) == Some("left");
        Ok(Self { inner, path, bos_token_id, eos_token_ids, pad_token_id, chat_template, padding_left })
    }

    /// The tokenizer of the GGUF model at `path`: the folder's `tokenizer.json` when one sits beside
    /// the file (see [`gguf_side_dir`]), else the one `file` carries. Returns which `tokenizer.json`
    /// was used, if any, for the caller to say.
    pub fn load_gguf(
        path: &Path,
        file: &lora_formats::gguf::GgufFile,
        config: &ModelConfig,
    ) -> Result<(Self, Option<PathBuf>)> {
        match gguf_side_dir(path) {
            Some(dir) => Ok((Self::load_dir(dir, config)?, Some(dir.join("tokenizer.json")))),
            None => Ok((Self::from_gguf(file)?, None)),
        }
    }

    /// The tokenizer a GGUF file carries (`tokenizer.ggml.*`): byte-level BPE (`gpt2`) with the
    /// pre-tokenizer its `tokenizer.ggml.pre` names, or SentencePiece BPE (`llama`) split as llama.cpp
    /// splits it; control and user-defined tokens as special tokens, BOS and EOS added as
    /// `add_bos_token` / `add_eos_token` say, and `tokenizer.chat_template`.
    pub fn from_gguf(g: &lora_formats::gguf::GgufFile) -> Result<Self> {
        let path = g.path().to_path_buf();
        let err = |m: String| CoreError::Tokenizer { path: path.clone(), message: m };
        let (json, bos, eos, pad, template) = crate::io::gguf::tokenizer::tokenizer_json(g).map_err(err)?;
        let inner = tokenizers::Tokenizer::from_str(&json.to_string()).map_err(|e| err(e.to_string()))?;
        Ok(Self {
            inner,
            path,
            bos_token_id: bos,
            eos_token_ids: eos.into_iter().collect(),
            pad_token_id: pad.or(eos),
            chat_template: template,
            padding_left: false,
        })
    }

    /// Encodes text; `add_special_tokens` applies the tokenizer's post-processor (e.g. BOS).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.inner
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| CoreError::Tokenizer { path: self.path.clone(), message: e.to_string() })
    }

    /// Decodes ids to text.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| CoreError::Tokenizer { path: self.path.clone(), message: e.to_string() })
    }

    /// The id of a token string.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Adds the `tokens` the vocabulary lacks as special tokens, at the next ids, as transformers'
    /// `add_special_tokens` does (the same `tokenizers` call); returns every token's id.
    pub fn add_special_tokens(&mut self, tokens: &[String]) -> Vec<u32> {
        let new: Vec<tokenizers::AddedToken> = tokens
            .iter()
            .filter(|t| self.inner.token_to_id(t).is_none())
            .map(|t| tokenizers::AddedToken::from(t.clone(), true))
            .collect();
        self.inner.add_special_tokens(&new);
        tokens.iter().map(|t| self.inner.token_to_id(t).expect("just added")).collect()
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into `dir`: this tokenizer, and the
    /// model's config with the special tokens `added` (ids, strings) in its `added_tokens_decoder`,
    /// as transformers saves a tokenizer after `add_special_tokens`.
    pub fn save_with_added(&self, dir: &Path, added: &[(u32, String)]) -> Result<()> {
        let io = |e: std::io::Error| CoreError::io(dir, e);
        let json = self
            .inner
            .to_string(true)
            .map_err(|e| CoreError::Tokenizer { path: self.path.clone(), message: e.to_string() })?;
        crate::io::safetensors_write::write_atomic(&dir.join("tokenizer.json"), json.as_bytes())?;
        let config_path = self.path.with_file_name("tokenizer_config.json");
        let mut config: Value = match std::fs::read(&config_path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| CoreError::config(&config_path, format!("not JSON: {e}")))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Object(Default::default()),
            Err(e) => return Err(io(e)),
        };
        let decoder = config
            .as_object_mut()
            .ok_or_else(|| CoreError::config(&config_path, "not a JSON object"))?
            .entry("added_tokens_decoder")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(map) = decoder.as_object_mut() {
            for (id, content) in added {
                map.insert(
                    id.to_string(),
                    serde_json::json!({"content": content, "lstrip": false, "normalized": false,
                                       "rstrip": false, "single_word": false, "special": true}),
                );
            }
        }
        let text = serde_json::to_string_pretty(&config).expect("json");
        crate::io::safetensors_write::write_atomic(&dir.join("tokenizer_config.json"), text.as_bytes())
    }
}

/// The folder of a GGUF file when a `tokenizer.json` sits beside it: that tokenizer is the model's,
/// over the one the file carries (training, generation and merges all follow this rule).
pub fn gguf_side_dir(path: &Path) -> Option<&Path> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    dir.join("tokenizer.json").is_file().then_some(dir)
}

/// Turns a growing list of ids into text pieces as they become printable: a piece is released only
/// once it does not end in a partial UTF-8 sequence (byte-fallback and byte-level tokens split
/// characters across tokens).
#[derive(Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    printed: usize,
}

impl TextStream {
    /// Adds one id and returns the new text it completes, if any.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = tok.decode(&self.ids, true)?;
        if text.ends_with('\u{FFFD}') || text.len() <= self.printed || !text.is_char_boundary(self.printed) {
            return Ok(None);
        }
        let piece = text[self.printed..].to_string();
        self.printed = text.len();
        Ok(Some(piece))
    }

    /// Whatever text is still held back (a trailing partial character), at the end of generation.
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String> {
        let text = tok.decode(&self.ids, true)?;
        let rest = if text.is_char_boundary(self.printed) && text.len() > self.printed {
            text[self.printed..].to_string()
        } else {
            String::new()
        };
        self.printed = text.len();
        Ok(rest)
    }
}
