//! `lora eval`: loss and perplexity of a model on a data file; the scoring is
//! `lora_train::evaluation::evaluate_file`, beside training's own evaluation. Preference pairs
//! (`--format preference`) get DPO's loss, reward accuracy and margin against a reference.

use std::path::PathBuf;

use anyhow::Result;
use lora_train::data::format::Format;
use lora_train::evaluation::evaluate_file;

/// Mean loss per scored token and perplexity of a model on a data file: text, completion, alpaca or chat JSONL.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: crate::model_args::ModelArgs,
    /// JSONL (or JSON array) data file.
    #[arg(long)]
    data: PathBuf,
    /// text: {"text"} lines, scored on every token as transformers' model(ids, labels=ids).loss;
    /// completion, alpaca, chat: scored on the tokens training would train on (answers, assistant
    /// turns); preference: {"prompt", "chosen", "rejected"} pairs (TRL's forms), scored by DPO's
    /// loss against the reference; kto: {"prompt", "completion", "label"} examples (or pairs,
    /// unpaired), scored by KTO's loss in batches of 4; auto: from the first record.
    #[arg(long, default_value = "text")]
    format: String,
    /// preference: the reference adapter (a folder or Hub id; default: the base without adapters).
    #[arg(long)]
    reference_adapter: Option<String>,
    /// preference: DPO's beta.
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
    /// preference: the loss (sigmoid, ipo, hinge, robust; simpo, which needs no reference; kto,
    /// apo_zero_unpaired, which score unpaired examples). Default: sigmoid, or kto on unpaired data.
    #[arg(long)]
    loss_type: Option<String>,
    /// kto: weight of the desirable examples' losses.
    #[arg(long, default_value_t = 1.0)]
    desirable_weight: f64,
    /// kto: weight of the undesirable examples' losses.
    #[arg(long, default_value_t = 1.0)]
    undesirable_weight: f64,
    /// preference: SimPO's target margin gamma.
    #[arg(long, default_value_t = 0.5)]
    gamma: f64,
    /// Longest sequence for the completion, alpaca and chat formats.
    #[arg(long, default_value_t = 2048)]
    max_seq_len: usize,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Runs `lora eval`.
pub fn run(a: Args) -> Result<()> {
    let (mut model, tok, _) = a.model.load()?;
    let first_is_pair = || {
        lora_train::data::records::read_records(&a.data).ok().and_then(|r| {
            r.into_iter()
                .find_map(|r| r.value.ok())
                .map(|v| v.get("chosen").is_some() && v.get("rejected").is_some() && v.get("text").is_none())
        })
    };
    let first_is_unpaired = || {
        lora_train::data::records::read_records(&a.data).ok().and_then(|r| {
            r.into_iter()
                .find_map(|r| r.value.ok())
                .map(|v| v.get("completion").is_some() && v.get("label").is_some_and(|l| l.is_boolean()))
        })
    };
    let kto_loss = a.loss_type.as_deref().is_some_and(|l| ["kto", "apo_zero_unpaired"].contains(&l));
    let guess = ["auto", "text"].contains(&a.format.as_str());
    // Unpaired examples and pairs are scored as such whatever the (default) format says: their
    // fields leave no doubt.
    if a.format == "kto" || (guess && (kto_loss || first_is_unpaired() == Some(true))) {
        return kto(a, &mut model, &tok);
    }
    if a.format == "preference" || (guess && first_is_pair() == Some(true)) {
        return preference(a, &mut model, &tok);
    }
    let r = evaluate_file(&mut model, &tok, &a.data, &a.format, a.max_seq_len)?;
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    // Texts are counted as texts, the other formats as examples (the keys scripts read).
    let (items, tokens) = if r.format == Format::Text { ("texts", "predicted") } else { ("examples", "scored") };
    if a.json {
        let v = serde_json::json!({
            items: r.items, "predicted_tokens": r.scored_tokens,
            "mean_loss": r.mean_loss, "perplexity": r.perplexity(),
        });
        println!("{v}");
    } else {
        println!(
            "{} {items}, {} {tokens} tokens: mean loss {:.6}, perplexity {:.4}",
            r.items,
            r.scored_tokens,
            r.mean_loss,
            r.perplexity()
        );
    }
    Ok(())
}

/// `lora eval --format preference`: DPO's loss, reward accuracy and margin of the model on pairs.
fn preference(a: Args, model: &mut lora_core::CausalLm, tok: &lora_core::Tokenizer) -> Result<()> {
    use anyhow::Context;
    use lora_train::preference::{Dpo, DpoLoss, PairIds, evaluate_pairs, fit, load_pairs};
    let loss_type = a.loss_type.as_deref().unwrap_or("sigmoid");
    let loss = DpoLoss::parse(loss_type)
        .with_context(|| format!("--loss-type must be sigmoid, ipo, hinge, robust or simpo, got '{loss_type}'"))?;
    anyhow::ensure!(a.beta > 0.0 && a.beta.is_finite(), "--beta must be positive, got {}", a.beta);
    let template = model_template(tok)?;
    let (pairs, _) = load_pairs(&a.data, tok, template.as_ref(), false, &Default::default())?;
    // As training fits them: each sequence keeps its first max_seq_len tokens.
    let pairs: Vec<PairIds> = pairs.into_iter().filter_map(|p| fit(p, a.max_seq_len, false).0).collect();
    anyhow::ensure!(!pairs.is_empty(), "{}: no pair fits in --max-seq-len {}", a.data.display(), a.max_seq_len);
    let reference = reference(&a, model)?;
    let dpo = Dpo { beta: a.beta, loss, label_smoothing: 0.0, gamma: a.gamma, sft_weight: 0.0 };
    let pad = tok.pad_token_id.unwrap_or(0);
    let m = evaluate_pairs(model, &reference, &pairs, 4, pad, &dpo)?;
    if a.json {
        let v = serde_json::json!({
            "pairs": pairs.len(), "loss": m.loss, "rewards/accuracies": m.rewards_accuracies,
            "rewards/margins": m.rewards_margins, "rewards/chosen": m.rewards_chosen,
            "rewards/rejected": m.rewards_rejected, "logps/chosen": m.logps_chosen, "logps/rejected": m.logps_rejected,
        });
        println!("{v}");
    } else {
        println!(
            "{} pairs: DPO loss {:.6} ({:?}, beta {}), reward accuracy {:.4}, mean margin {:.6}",
            pairs.len(),
            m.loss,
            loss,
            a.beta,
            m.rewards_accuracies,
            m.rewards_margins
        );
    }
    Ok(())
}

/// `lora eval --format kto`: KTO's loss, KL estimate and rewards of the model on unpaired examples
/// (pairs are unpaired as TRL does), in micro-batches of 4 whose examples' mismatched completions
/// come from the same 4.
fn kto(a: Args, model: &mut lora_core::CausalLm, tok: &lora_core::Tokenizer) -> Result<()> {
    use anyhow::Context;
    use lora_train::preference::kto::{Kto, KtoLoss, evaluate_unpaired, fit_unpaired, load_unpaired, mismatch};
    const BATCH: usize = 4;
    let loss_type = a.loss_type.as_deref().unwrap_or("kto");
    let loss = KtoLoss::parse(loss_type).with_context(|| {
        format!("--loss-type must be kto or apo_zero_unpaired for KTO's examples, got '{loss_type}'")
    })?;
    anyhow::ensure!(a.beta > 0.0 && a.beta.is_finite(), "--beta must be positive, got {}", a.beta);
    for (name, w) in [("--desirable-weight", a.desirable_weight), ("--undesirable-weight", a.undesirable_weight)] {
        anyhow::ensure!(w > 0.0 && w.is_finite(), "{name} must be positive, got {w}");
    }
    let template = model_template(tok)?;
    let (examples, _) = load_unpaired(&a.data, tok, template.as_ref(), false, &Default::default())?;
    // As training prepares them: prompts that fill max_seq_len dropped, mismatched, then cut.
    let mut examples: Vec<_> = examples.into_iter().filter(|e| e.prompt.len() < a.max_seq_len).collect();
    anyhow::ensure!(!examples.is_empty(), "{}: no example fits in --max-seq-len {}", a.data.display(), a.max_seq_len);
    let kto =
        Kto { beta: a.beta, loss, desirable_weight: a.desirable_weight, undesirable_weight: a.undesirable_weight };
    if loss.needs_kl() {
        mismatch(&mut examples, BATCH);
    }
    for e in &mut examples {
        fit_unpaired(e, a.max_seq_len);
    }
    let reference = reference(&a, model)?;
    let pad = tok.pad_token_id.unwrap_or(0);
    let m = evaluate_unpaired(model, &reference, &examples, BATCH, pad, &kto)?;
    // NaN (a side with no example) is JSON's null.
    let v = |x: f64| if x.is_finite() { serde_json::json!(x) } else { serde_json::Value::Null };
    if a.json {
        let out = serde_json::json!({
            "examples": examples.len(), "loss": m.loss, "kl": m.kl, "rewards/chosen": v(m.rewards_chosen),
            "rewards/rejected": v(m.rewards_rejected), "rewards/margins": v(m.rewards_margins),
            "logps/chosen": v(m.logps_chosen), "logps/rejected": v(m.logps_rejected),
        });
        println!("{out}");
    } else {
        println!(
            "{} examples: KTO loss {:.6} ({loss_type}, beta {}), KL {:.6}, rewards: desirable {:.6}, undesirable {:.6}",
            examples.len(),
            m.loss,
            a.beta,
            m.kl,
            m.rewards_chosen,
            m.rewards_rejected
        );
    }
    Ok(())
}

/// The model's chat template, for conversational records.
fn model_template(tok: &lora_core::Tokenizer) -> Result<Option<lora_train::data::chat_template::ChatTemplate>> {
    use lora_train::data::chat_template::{ChatTemplate, FIXED_DATE_UNIX};
    tok.chat_template
        .as_deref()
        .map(|src| ChatTemplate::for_tokenizer(src, tok, FIXED_DATE_UNIX))
        .transpose()
        .map_err(anyhow::Error::msg)
}

/// `--reference-adapter`'s reference, else the base without adapters.
fn reference(a: &Args, model: &mut lora_core::CausalLm) -> Result<lora_train::preference::Reference> {
    use anyhow::Context;
    use lora_train::preference::Reference;
    match &a.reference_adapter {
        None => Ok(Reference::Base),
        Some(r) => {
            let dir = crate::hub_refs::adapter(r, a.model.offline)?;
            Reference::from_adapter(model, &dir)
                .with_context(|| format!("loading the reference adapter {}", dir.display()))
        }
    }
}
