//! The README model card written into every output folder, as the Hub expects (YAML front matter).

/// A model card naming the base, what was done, and a body of details.
pub fn model_card(base: &str, summary: &str, details: &str) -> String {
    format!(
        "---\nbase_model: {base}\nlibrary_name: transformers\ntags:\n- lora\n- merge\n---\n\n\
         # Merged model\n\n{summary}\n\nBase model: `{base}`.\n\n{details}\n\
         Made with [lora](https://github.com/lora-rs/lora).\n"
    )
}
