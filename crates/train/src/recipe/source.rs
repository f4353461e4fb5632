//! Where a recipe came from, and positions in it: errors found while parsing or checking point at
//! `file:line:col` and the key.

use super::suggest::suggest;

/// Where a recipe came from, for error messages.
#[derive(Debug, Clone)]
pub struct Source {
    /// Display name (the path as given).
    pub name: String,
    /// Full text.
    pub text: String,
}

impl Source {
    /// 1-based line and column of a byte offset.
    pub(super) fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    /// The `[section]` that contains a byte offset.
    pub(super) fn section_at(&self, offset: usize) -> Option<String> {
        self.text[..offset.min(self.text.len())]
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix('[').and_then(|r| r.split(']').next()).map(|s| s.trim().to_string()))
    }

    /// Position of `key = ` inside `[section]`, for errors found after parsing.
    pub(super) fn locate(&self, section: &str, key: &str) -> Option<(usize, usize)> {
        let mut in_section = false;
        let mut offset = 0;
        for line in self.text.split_inclusive('\n') {
            let t = line.trim();
            if let Some(h) = t.strip_prefix('[') {
                in_section = h.split(']').next().map(str::trim) == Some(section);
            } else if in_section && t.split('=').next().map(str::trim) == Some(key) && t.contains('=') {
                let indent = line.len() - line.trim_start().len();
                return Some(self.line_col(offset + indent));
            }
            offset += line.len();
        }
        None
    }
}

/// Turns a toml deserialisation error into `file:line:col: message`.
pub(super) fn describe(src: &Source, e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_string();
    let (pos, section) = match e.span() {
        Some(span) => (Some(src.line_col(span.start)), src.section_at(span.start)),
        None => (None, None),
    };
    let at = match pos {
        Some((l, c)) => format!("{}:{l}:{c}", src.name),
        None => src.name.clone(),
    };
    // "unknown field `x`, expected one of `a`, `b`" -> our wording with a suggestion.
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let unknown = rest.split('`').next().unwrap_or_default();
        let expected: Vec<String> = rest.split('`').skip(2).step_by(2).map(str::to_string).collect();
        let within = section.map(|s| format!(" in [{s}]")).unwrap_or_default();
        let hint = match suggest(unknown, &expected) {
            Some(s) => format!("; did you mean '{s}'?"),
            None => format!("; expected one of: {}", expected.join(", ")),
        };
        return format!("{at}: unknown key '{unknown}'{within}{hint}");
    }
    // A value of the wrong type or range: name the key of the line it sits on.
    let key = e.span().and_then(|span| {
        let line_start = src.text[..span.start].rfind('\n').map_or(0, |i| i + 1);
        let line = src.text[line_start..].lines().next()?;
        let (k, _) = line.split_once('=')?;
        let k = k.trim().trim_matches('"');
        (!k.is_empty() && !k.contains(char::is_whitespace)).then(|| k.to_string())
    });
    match (key, section) {
        (Some(k), Some(s)) => format!("{at}: {s}.{k}: {msg}"),
        (Some(k), None) => format!("{at}: {k}: {msg}"),
        (None, s) => format!("{at}: {msg}{}", s.map(|s| format!(" (in [{s}])")).unwrap_or_default()),
    }
}
