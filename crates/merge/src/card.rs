//! The README model card written into every output folder, as the Hub expects (YAML front matter).

/// A model card naming the base, what was done, and a body of details.
pub fn model_card(base: &str, summary: &str, details: &str) -> String {
    format!(
        "---\nbase_model: {base}\nlibrary_name: transformers\ntags:\n- lora\n- merge\n---\n\n\
         # Merged model\n\n{summary}\n\nBase model: `{base}`.\n\n{details}\n\
         Made with [lora](https://github.com/lora-rs/lora).\n"
    )
}

/// The card's line about element types: every tensor in its stored dtype, or converted to
/// `target` with the tensors left in f32 named.
pub fn dtype_line(dominant: crate::dtype::DType, target: Option<crate::dtype::DType>, kept_f32: &[String]) -> String {
    match target {
        None => format!(
            "Every tensor keeps its stored dtype (mostly {}); untouched ones are the base's bytes.",
            dominant.torch_name()
        ),
        Some(t) if kept_f32.is_empty() => format!("Float tensors converted to {}.", t.torch_name()),
        Some(t) => format!(
            "Float tensors converted to {}, except {} kept in float32 as the architecture keeps them: {}.",
            t.torch_name(),
            kept_f32.len(),
            kept_f32.join(", ")
        ),
    }
}

/// A line naming the base's own model card, when its folder has one (this card replaces it in the
/// output: it describes the merge, and the base's stays the reference for the model itself).
pub fn base_card_line(base_dir: &std::path::Path) -> String {
    let card = base_dir.join("README.md");
    if card.is_file() { format!("The base model's own card: `{}`.\n", card.display()) } else { String::new() }
}
