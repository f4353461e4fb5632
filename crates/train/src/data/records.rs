//! Training data: JSONL (or JSON array) files of records, tokenized into examples with a label
//! per position (`None` = not trained on). This module reads the `text` format; the record shapes
//! of instruction and chat data plug in through [`Format`].

use std::path::{Path, PathBuf};

use lora_core::Tokenizer;
use serde_json::Value;

use crate::error::{Result, TrainError};

/// Record format of a data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{"text": "..."}`: every token is trained on.
    Text,
}

impl Format {
    /// Parses the recipe's `format`; `auto` looks at the first record.
    pub fn resolve(name: &str, first: Option<&Value>) -> std::result::Result<Self, String> {
        match name {
            "text" => Ok(Self::Text),
            "auto" => match first {
                Some(v) if v.get("text").is_some() => Ok(Self::Text),
                Some(_) => Err("cannot detect the format from the first record: expected a \"text\" field".into()),
                None => Err("no records".into()),
            },
            other => Err(format!("unknown format '{other}'")),
        }
    }
}

/// One tokenized example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Token ids.
    pub ids: Vec<u32>,
    /// The label of each position (the token itself when trained on), aligned with `ids`.
    pub labels: Vec<Option<u32>>,
}

impl Example {
    /// Positions that count in the loss (a label at position ≥ 1).
    pub fn trained_tokens(&self) -> usize {
        self.labels.iter().skip(1).filter(|l| l.is_some()).count()
    }
}

/// Counts reported at the start of training.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataSummary {
    /// Examples kept.
    pub examples: usize,
    /// Tokens in kept examples.
    pub tokens: usize,
    /// Tokens that count in the loss.
    pub trained_tokens: usize,
    /// Examples cut to max_seq_len.
    pub truncated: usize,
}

/// A record with where it came from.
#[derive(Debug, Clone)]
pub struct Record {
    /// The file.
    pub file: PathBuf,
    /// 1-based line (JSONL) or element index (JSON array).
    pub line: usize,
    /// The parsed object.
    pub value: Value,
}

/// Reads every record of a `.jsonl` or `.json` file. A BOM, Windows line endings, blank lines and a
/// missing final newline are accepted; invalid UTF-8 or JSON is an error naming the line.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let is_array = path.extension().is_some_and(|e| e == "json");
    if is_array {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| TrainError::Data(format!("{}: invalid UTF-8 at byte {}", path.display(), e.valid_up_to())))?;
        let v: Value = serde_json::from_str(text)
            .map_err(|e| TrainError::Data(format!("{}:{}:{}: {e}", path.display(), e.line(), e.column())))?;
        let Value::Array(items) = v else {
            return Err(TrainError::Data(format!(
                "{}: a .json data file must hold an array of records",
                path.display()
            )));
        };
        return Ok(items
            .into_iter()
            .enumerate()
            .map(|(i, value)| Record { file: path.to_path_buf(), line: i + 1, value })
            .collect());
    }
    let mut out = Vec::new();
    for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let at = || format!("{}:{}", path.display(), n + 1);
        let text = std::str::from_utf8(line).map_err(|_| TrainError::Data(format!("{}: invalid UTF-8", at())))?;
        if text.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(text).map_err(|e| TrainError::Data(format!("{}: not valid JSON: {e}", at())))?;
        out.push(Record { file: path.to_path_buf(), line: n + 1, value });
    }
    Ok(out)
}

/// Tokenizes one record.
pub fn tokenize(record: &Record, format: Format, tok: &Tokenizer) -> Result<Example> {
    let at = || format!("{}:{}", record.file.display(), record.line);
    match format {
        Format::Text => {
            let Some(Value::String(text)) = record.value.get("text") else {
                return Err(TrainError::Data(format!("{}: expected a string field \"text\"", at())));
            };
            let mut ids = tok.encode(text, true)?;
            // End with EOS so that the model learns where a document stops.
            if let Some(&eos) = tok.eos_token_ids.first()
                && ids.last() != Some(&eos)
            {
                ids.push(eos);
            }
            let labels = ids.iter().map(|&i| Some(i)).collect();
            Ok(Example { ids, labels })
        }
    }
}

/// Reads, tokenizes and truncates the examples of some files.
pub fn load_examples(
    files: &[PathBuf],
    format: &str,
    tok: &Tokenizer,
    max_seq_len: usize,
) -> Result<(Vec<Example>, DataSummary)> {
    let mut records = Vec::new();
    for f in files {
        records.extend(read_records(f)?);
    }
    let names = files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ");
    if records.is_empty() {
        return Err(TrainError::Data(format!("{names}: no records")));
    }
    let format = Format::resolve(format, records.first().map(|r| &r.value))
        .map_err(|m| TrainError::Data(format!("{}:{}: {m}", records[0].file.display(), records[0].line)))?;
    let mut summary = DataSummary::default();
    let mut examples = Vec::with_capacity(records.len());
    for r in &records {
        let mut ex = tokenize(r, format, tok)?;
        if ex.ids.len() > max_seq_len {
            ex.ids.truncate(max_seq_len);
            ex.labels.truncate(max_seq_len);
            summary.truncated += 1;
        }
        summary.examples += 1;
        summary.tokens += ex.ids.len();
        summary.trained_tokens += ex.trained_tokens();
        examples.push(ex);
    }
    if summary.trained_tokens == 0 {
        return Err(TrainError::Data(format!("{names}: no trainable tokens")));
    }
    Ok((examples, summary))
}
