//! The model card (`README.md`) checked and completed before publishing: the Hub reads its YAML
//! front matter to link the adapter to its base model and to show how to load it. Required:
//! `base_model` (a Hub id), `library_name: peft`, `pipeline_tag`, and `tags` with `lora`, `peft`
//! and `base_model:adapter:<base>`. What is missing is filled; the rest of the card is kept as
//! written. Only the top-level `key: value` / `key:` + `- item` forms are interpreted; other
//! lines are carried over verbatim.

use crate::reference::RepoId;

/// A completed card and what was filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCard {
    /// The full text to upload as README.md.
    pub text: String,
    /// Keys that were added or changed.
    pub filled: Vec<String>,
}

/// One top-level front-matter entry and its continuation lines.
struct Entry {
    key: Option<String>,
    lines: Vec<String>,
}

/// Completes `existing` (None: no README.md). `base_model` overrides the card's; `hint` (the
/// adapter config's `base_model_name_or_path`) is used when the card has none. Errors say what
/// to pass.
pub fn complete(
    existing: Option<&str>,
    base_model: Option<&str>,
    hint: Option<&str>,
    repo: &str,
) -> Result<ModelCard, String> {
    let (front, body) = match existing {
        Some(text) => split(text),
        None => (Vec::new(), None),
    };
    let mut entries = parse(&front);
    let mut filled = Vec::new();
    let is_id = |s: &str| RepoId::parse(s).is_ok() && !s.contains('@');

    let current = scalar(&entries, "base_model");
    let base = match (base_model, &current) {
        (Some(b), _) if is_id(b) => b.to_string(),
        (Some(b), _) => return Err(format!("--base-model '{b}' is not a Hub id (org/name)")),
        (None, Some(c)) if is_id(c) => c.clone(),
        (None, Some(c)) => {
            return Err(format!(
                "base_model '{c}' is not a Hub id; pass --base-model ORG/NAME (the base model on the Hub)"
            ));
        }
        (None, None) => match hint {
            Some(h) if is_id(h) => h.to_string(),
            Some(h) => {
                return Err(format!(
                    "no base_model, and adapter_config.json's base_model_name_or_path '{h}' is not a Hub id; \
                     pass --base-model ORG/NAME"
                ));
            }
            None => return Err("no base_model; pass --base-model ORG/NAME".into()),
        },
    };
    if current.as_deref() != Some(base.as_str()) {
        set(&mut entries, "base_model", vec![format!("base_model: {base}")]);
        filled.push("base_model".into());
    }
    match scalar(&entries, "library_name").as_deref() {
        Some("peft") => {}
        Some(other) => return Err(format!("library_name is '{other}'; a LoRA adapter's is 'peft'")),
        None => {
            set(&mut entries, "library_name", vec!["library_name: peft".into()]);
            filled.push("library_name".into());
        }
    }
    if scalar(&entries, "pipeline_tag").is_none() {
        set(&mut entries, "pipeline_tag", vec!["pipeline_tag: text-generation".into()]);
        filled.push("pipeline_tag".into());
    }
    let old_tags = list(&entries, "tags");
    // A tag for another base (the card was written for a local path) is replaced.
    let mut tags: Vec<String> = old_tags.iter().filter(|t| !t.starts_with("base_model:adapter:")).cloned().collect();
    for t in ["lora".to_string(), "peft".to_string(), format!("base_model:adapter:{base}")] {
        if !tags.contains(&t) {
            tags.push(t);
        }
    }
    if tags != old_tags {
        let mut lines = vec!["tags:".to_string()];
        lines.extend(tags.iter().map(|t| format!("- {t}")));
        set(&mut entries, "tags", lines);
        filled.push("tags".into());
    }

    let mut text = String::from("---\n");
    for e in &entries {
        for l in &e.lines {
            text.push_str(l);
            text.push('\n');
        }
    }
    text.push_str("---\n");
    match body {
        Some(b) => text.push_str(&b),
        None => {
            let name = repo.rsplit('/').next().unwrap_or(repo);
            text.push_str(&format!(
                "\n# {name}\n\nA LoRA adapter for [{base}](https://huggingface.co/{base}), published with \
                 [lora](https://github.com/lora-rs/lora). Load it with PEFT (`PeftModel.from_pretrained(base, \"{repo}\")`) \
                 or with `lora generate --adapter {repo}`.\n"
            ));
        }
    }
    Ok(ModelCard { text, filled })
}

/// Front-matter lines and the rest (None when the card has no front matter and no body).
fn split(text: &str) -> (Vec<String>, Option<String>) {
    let mut lines = text.split_inclusive('\n');
    let first = lines.clone().next().map(|l| l.trim_end());
    if first != Some("---") {
        return (Vec::new(), Some(if text.starts_with('\n') { text.to_string() } else { format!("\n{text}") }));
    }
    lines.next();
    let mut front = Vec::new();
    let mut consumed = text.split_inclusive('\n').next().map_or(0, str::len);
    for l in lines {
        consumed += l.len();
        if l.trim_end() == "---" {
            return (front, Some(text[consumed..].to_string()));
        }
        front.push(l.trim_end_matches(['\n', '\r']).to_string());
    }
    // No closing line: not front matter after all.
    (Vec::new(), Some(format!("\n{text}")))
}

fn parse(front: &[String]) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    for l in front {
        let top_key = (!l.starts_with([' ', '\t', '-', '#']))
            .then(|| l.split_once(':').map(|(k, _)| k.trim().to_string()))
            .flatten()
            .filter(|k| !k.is_empty() && !k.contains(' '));
        match (top_key, entries.last_mut()) {
            (Some(key), _) => entries.push(Entry { key: Some(key), lines: vec![l.clone()] }),
            (None, Some(last)) => last.lines.push(l.clone()),
            (None, None) => entries.push(Entry { key: None, lines: vec![l.clone()] }),
        }
    }
    entries
}

fn find<'a>(entries: &'a [Entry], key: &str) -> Option<&'a Entry> {
    entries.iter().find(|e| e.key.as_deref() == Some(key))
}

fn unquote(s: &str) -> String {
    s.trim().trim_matches(|c| c == '"' || c == '\'').to_string()
}

/// A scalar value (`key: value`); None when absent or empty.
fn scalar(entries: &[Entry], key: &str) -> Option<String> {
    let e = find(entries, key)?;
    let v = e.lines[0].split_once(':')?.1.trim();
    let v = v.split(" #").next().unwrap_or(v);
    (!v.is_empty()).then(|| unquote(v))
}

/// A list value, inline (`[a, b]`), block (`- a`) or a single scalar.
fn list(entries: &[Entry], key: &str) -> Vec<String> {
    let Some(e) = find(entries, key) else { return Vec::new() };
    let inline = e.lines[0].split_once(':').map(|(_, v)| v.trim()).unwrap_or("");
    if let Some(inner) = inline.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        return inner.split(',').map(unquote).filter(|s| !s.is_empty()).collect();
    }
    if !inline.is_empty() {
        return vec![unquote(inline)];
    }
    e.lines[1..]
        .iter()
        .filter_map(|l| l.trim_start().strip_prefix('-'))
        .map(unquote)
        .filter(|s| !s.is_empty())
        .collect()
}

fn set(entries: &mut Vec<Entry>, key: &str, lines: Vec<String>) {
    match entries.iter_mut().find(|e| e.key.as_deref() == Some(key)) {
        Some(e) => e.lines = lines,
        None => entries.push(Entry { key: Some(key.into()), lines }),
    }
}
