//! Chat templates as transformers renders them: Jinja (here minijinja) with `trim_blocks` and
//! `lstrip_blocks`, loop controls, Python string methods, and the globals Hugging Face templates
//! use (`raise_exception`, `strftime_now`, `tojson` as Python's `json.dumps`, `bos_token`,
//! `eos_token`, `add_generation_prompt`).
//!
//! Extra keyword arguments (`enable_thinking`, ...) reach the template as transformers passes
//! `apply_chat_template`'s kwargs: as top-level variables. Which characters belong to assistant turns
//! is computed by rendering, not by searching the text (`super::turns`).

use minijinja::{Environment, Error, ErrorKind, Value as JValue, context};
use serde_json::Value;

/// A compiled chat template with its special-token strings.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
    kwargs: serde_json::Map<String, Value>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("bos", &self.bos).field("eos", &self.eos).finish()
    }
}

/// Python's `json.dumps(v, ensure_ascii=False)` (separators ", " and ": "), or with `indent`.
pub fn python_json(v: &Value, indent: Option<usize>) -> String {
    fn esc(s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    fn go(v: &Value, indent: Option<usize>, depth: usize, out: &mut String) {
        let (open_nl, sep, close_nl) = match indent {
            Some(n) => (
                format!("\n{}", " ".repeat(n * (depth + 1))),
                format!(",\n{}", " ".repeat(n * (depth + 1))),
                format!("\n{}", " ".repeat(n * depth)),
            ),
            None => (String::new(), ", ".to_string(), String::new()),
        };
        match v {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => match n.as_f64() {
                Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e16 => out.push_str(&format!("{f:.1}")),
                _ => out.push_str(&n.to_string()),
            },
            Value::String(s) => esc(s, out),
            Value::Array(a) if a.is_empty() => out.push_str("[]"),
            Value::Array(a) => {
                out.push('[');
                out.push_str(&open_nl);
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&sep);
                    }
                    go(x, indent, depth + 1, out);
                }
                out.push_str(&close_nl);
                out.push(']');
            }
            Value::Object(o) if o.is_empty() => out.push_str("{}"),
            Value::Object(o) => {
                out.push('{');
                out.push_str(&open_nl);
                for (i, (k, x)) in o.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&sep);
                    }
                    esc(k, out);
                    out.push_str(": ");
                    go(x, indent, depth + 1, out);
                }
                out.push_str(&close_nl);
                out.push('}');
            }
        }
    }
    let mut out = String::new();
    go(v, indent, 0, &mut out);
    out
}

/// `strftime` for a Unix time in UTC, with the directives chat templates use.
fn strftime(fmt: &str, unix: i64) -> String {
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];
    let month = MONTHS[(m - 1) as usize];
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y % 100)),
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('a') => out.push_str(&weekday[..3]),
            Some('A') => out.push_str(weekday),
            Some('H') => out.push_str(&format!("{:02}", secs / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", secs % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// The fixed "now" of training renders (Llama 3.1's own default date), so that runs repeat.
pub const FIXED_DATE_UNIX: i64 = 1_721_952_000; // 2024-07-26

impl ChatTemplate {
    /// Compiles `source`; `now` is the Unix time `strftime_now` reports.
    pub fn new(source: &str, bos: Option<String>, eos: Option<String>, now: i64) -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| format!("chat template syntax: {e}"))?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<JValue, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", move |fmt: String| strftime(&fmt, now));
        env.add_filter("tojson", |v: JValue, kwargs: minijinja::value::Kwargs| -> Result<JValue, Error> {
            let indent: Option<usize> = kwargs.get("indent")?;
            let json = serde_json::to_value(&v).map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
            Ok(JValue::from_safe_string(python_json(&json, indent)))
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| format!("chat template does not compile: {e:#}"))?;
        Ok(Self { env, bos: bos.unwrap_or_default(), eos: eos.unwrap_or_default(), kwargs: serde_json::Map::new() })
    }

    /// Compiles `source` with the BOS and first EOS token strings of `tok`.
    pub fn for_tokenizer(source: &str, tok: &lora_core::Tokenizer, now: i64) -> Result<Self, String> {
        let text = |id: Option<u32>| id.and_then(|i| tok.inner().id_to_token(i));
        Self::new(source, text(tok.bos_token_id), text(tok.eos_token_ids.first().copied()), now)
    }

    /// The template's extra keyword arguments (`enable_thinking = false`, ...), passed as top-level
    /// variables. The names lora sets itself are refused.
    pub fn with_kwargs(mut self, kwargs: serde_json::Map<String, Value>) -> Result<Self, String> {
        for reserved in ["messages", "add_generation_prompt", "bos_token", "eos_token"] {
            if kwargs.contains_key(reserved) {
                return Err(format!("template_kwargs.{reserved}: set by lora, not by the recipe"));
            }
        }
        self.kwargs = kwargs;
        Ok(self)
    }

    /// Renders messages (JSON objects with at least `role` and `content`).
    pub fn render(&self, messages: &[Value], add_generation_prompt: bool) -> Result<String, String> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// [`Self::render`] with the conversation's tool definitions (a record's `tools`, which
    /// transformers passes as `apply_chat_template(tools=...)`).
    pub fn render_with_tools(
        &self,
        messages: &[Value],
        tools: Option<&Value>,
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let tmpl = self.env.get_template("chat").expect("added in new");
        let fixed = context! {
            messages => JValue::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos,
            eos_token => &self.eos,
        };
        let fixed = match tools {
            Some(tools) => context! { tools => JValue::from(minijinja::value::Serde(tools)), ..fixed },
            None => fixed,
        };
        let ctx = if self.kwargs.is_empty() {
            fixed
        } else {
            // The fixed names first: kwargs never shadow them (with_kwargs refuses them anyway).
            context! { ..fixed, ..JValue::from(minijinja::value::Serde(&self.kwargs)) }
        };
        tmpl.render(ctx).map_err(|e| match e.kind() {
            ErrorKind::InvalidOperation => format!("chat template: {}", e.detail().unwrap_or("error")),
            _ => format!("chat template: {e:#}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_matches_python() {
        // python: datetime.utcfromtimestamp(1721952000).strftime("%d %b %Y %A %H:%M") == "26 Jul 2024 Friday 00:00"
        assert_eq!(strftime("%d %b %Y %A %H:%M", FIXED_DATE_UNIX), "26 Jul 2024 Friday 00:00");
        assert_eq!(strftime("%Y-%m-%d", 0), "1970-01-01");
    }

    #[test]
    fn json_is_pythons() {
        let v: Value = serde_json::from_str(r#"{"b": [1, 2.5, "x\n"], "a": {"k": null, "é": true}}"#).unwrap();
        // Insertion order, as Python dicts keep it.
        assert_eq!(python_json(&v, None), r#"{"b": [1, 2.5, "x\n"], "a": {"k": null, "é": true}}"#);
        assert_eq!(python_json(&serde_json::json!([1]), Some(2)), "[\n  1\n]");
    }
}
