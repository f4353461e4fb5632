//! The model card of a finished run: its data, how the base was held, how the adapter started, and
//! its results, beside the recipe.

use crate::adapter_files::base_model_name;
use crate::recipe::Method;
use crate::run_files::{self, StepMetrics};
use crate::trainer::Prepared;

/// The card's text for run `p` of `total` steps (`metrics` as written, `recipe_text` as kept).
pub(crate) fn card(
    p: &Prepared,
    recipe_text: &str,
    metrics: &[StepMetrics],
    total: u64,
    eval_loss: Option<f64>,
) -> String {
    let s = &p.train_summary;
    let data_desc = format!(
        "Training files: {} (format {}). {} examples, {} tokens, {} trained tokens; {} truncated and {} dropped at {} tokens; {} invalid skipped.{}",
        p.recipe.data.train.to_vec().iter().map(|f| format!("`{}`", f.display())).collect::<Vec<_>>().join(", "),
        p.recipe.data.format,
        s.examples,
        s.tokens,
        s.trained_tokens,
        s.truncated,
        s.dropped,
        p.recipe.data.max_seq_len,
        s.skipped,
        p.validation_summary.as_ref().map(|v| format!(" Validation: {} examples.", v.examples)).unwrap_or_default()
    );
    let data_desc = match p.recipe.method() {
        Method::Sft => data_desc,
        Method::Preference => format!("{} {data_desc}", crate::preference::card::method_text(&p.recipe)),
    };
    let opts = p.model.load_options;
    let data_desc = match opts.quantize {
        lora_core::Quantize::None => format!("{data_desc}\n\nThe base was held in {} while training.", opts.dtype),
        q => format!(
            "{data_desc}\n\nTrained as QLoRA: the base's decoder linear layers were stored as {q} (bitsandbytes' \
             NF4, blocks of 64), the rest in {}. Evaluate on the same base (`lora eval --quantize {q}`, or \
             transformers with `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=\"nf4\"{})`); to merge \
             into the weights it was trained against, use `lora merge --quantized-base {q}`.",
            opts.dtype,
            if matches!(q, lora_core::Quantize::Nf4 { double_quant: true }) {
                ", bnb_4bit_use_double_quant=True"
            } else {
                ""
            }
        ),
    };
    let results = format!(
        "| steps | final train loss | validation loss | validation perplexity |\n|---|---|---|---|\n| {} | {:.4} | {} | {} |",
        total,
        metrics.last().map_or(f64::NAN, |m| m.loss),
        eval_loss.map_or("-".into(), |l| format!("{l:.4}")),
        eval_loss.filter(|_| p.recipe.method() == Method::Sft).map_or("-".into(), |l| format!("{:.3}", l.exp()))
    );
    let mut data_desc = data_desc;
    if !p.initial.is_empty() {
        data_desc.push_str(&run_files::moving_init_text(&p.recipe.lora.init, p.recipe.lora.r));
    }
    run_files::model_card(&base_model_name(&p.recipe), recipe_text, &data_desc, &results)
}
