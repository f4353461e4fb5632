//! Reading data files: JSONL (one record per line) or a JSON array, as users bring them.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Result, TrainError};

/// A record with where it came from.
#[derive(Debug, Clone)]
pub struct Record {
    /// The file.
    pub file: PathBuf,
    /// 1-based line (JSONL) or element index (JSON array).
    pub line: usize,
    /// The parsed object, or why the line is not one (invalid UTF-8 or JSON).
    pub value: std::result::Result<Value, String>,
}

/// Reads every record of a `.jsonl` or `.json` file. A BOM, Windows line endings, blank lines and a
/// missing final newline are accepted. A JSONL line that is not valid UTF-8 or JSON is returned as a
/// record holding the reason, so that the caller can stop on it or skip it.
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
            .map(|(i, value)| Record { file: path.to_path_buf(), line: i + 1, value: Ok(value) })
            .collect());
    }
    let mut out = Vec::new();
    for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let value = match std::str::from_utf8(line) {
            Err(e) => Err(format!("invalid UTF-8 at byte {}", e.valid_up_to())),
            Ok(text) if text.trim().is_empty() => continue,
            Ok(text) => serde_json::from_str::<Value>(text).map_err(|e| format!("not valid JSON: {e}")),
        };
        out.push(Record { file: path.to_path_buf(), line: n + 1, value });
    }
    Ok(out)
}
