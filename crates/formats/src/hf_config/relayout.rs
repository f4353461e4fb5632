//! Module paths across the two checkpoint forms of an architecture with a multimodal wrapper
//! (Qwen3.5): the text form names its modules `model.layers.N.…`, the Hub form
//! `model.language_model.layers.N.…`. An adapter trained on one form matches nothing on the other
//! (PEFT and vLLM then apply it to nothing, silently); lora maps its names when every one of its
//! modules exists in the other form.

use super::architecture::ARCHITECTURES;

/// A renaming of module paths from one checkpoint form to the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayout {
    /// The text model's prefix in the adapter's form (`model.`).
    from: String,
    /// The same in the base's form (`model.language_model.`).
    to: String,
}

impl Relayout {
    /// The renaming under which every module of `modules` exists in the base (`exists`), when some
    /// do not as named and one does; `None` when they all exist as named or no renaming helps.
    pub fn find<'a>(modules: impl IntoIterator<Item = &'a str> + Clone, exists: impl Fn(&str) -> bool) -> Option<Self> {
        if modules.clone().into_iter().all(&exists) {
            return None;
        }
        let candidates = ARCHITECTURES.iter().filter_map(|s| s.wrapper).flat_map(|w| {
            let hub = format!("{}.", w.prefix);
            [Self { from: "model.".into(), to: hub.clone() }, Self { from: hub, to: "model.".into() }]
        });
        for r in candidates {
            let mapped: Option<Vec<String>> = modules.clone().into_iter().map(|m| r.try_apply(m)).collect();
            if mapped.is_some_and(|m| m.iter().all(|m| exists(m))) {
                return Some(r);
            }
        }
        None
    }

    /// `module` in the base's form. A module outside the text model (`lm_head`) keeps its name.
    pub fn apply(&self, module: &str) -> String {
        self.try_apply(module).unwrap_or_else(|| module.to_string())
    }

    /// `module` renamed, or `None` when it is inside the text model but not under `from` (so the
    /// renaming does not describe this adapter).
    fn try_apply(&self, module: &str) -> Option<String> {
        if !module.starts_with("model.") {
            return Some(module.to_string());
        }
        // `model.` as the source prefix must not swallow the Hub form's own `model.language_model.`.
        if self.from == "model." && module.starts_with(&self.to) {
            return None;
        }
        module.strip_prefix(&self.from).map(|rest| format!("{}{rest}", self.to))
    }

    /// One line for the user: which form the adapter names and which the base has.
    pub fn describe(&self) -> String {
        let form = |p: &str| if p == "model." { "text form" } else { "Hub form" };
        format!(
            "the adapter names the {} ({}layers.N…) and the base is the {} ({}layers.N…): module names mapped",
            form(&self.from),
            self.from,
            form(&self.to),
            self.to
        )
    }
}
