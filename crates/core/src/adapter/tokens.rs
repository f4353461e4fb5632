//! PEFT's trainable tokens beside LoRA (`LoraConfig(trainable_token_indices=[...])`): the trained rows
//! of the input embedding and, on an untied model when named (`{"embed_tokens": [...], "lm_head":
//! [...]}`), of the head ([`crate::network::token_rows`]), saved as PEFT saves them,
//! `base_model.model.<prefix>.embed_tokens.token_adapter.trainable_tokens_delta` and
//! `base_model.model.lm_head.token_adapter.trainable_tokens_delta` `[n, hidden]` (the rows' values),
//! with the ids in `adapter_config.json`. On a tied model PEFT ties the head's token adapter to the
//! embedding's and saves it once; so does lora.

use burn::tensor::{Tensor, TensorData};
use lora_formats::safetensors::SafetensorsFile;

use crate::adapter::PEFT_PREFIX;
use crate::adapter::config::{AdapterConfig, TokenIndices};
use crate::error::{CoreError, Result};
use crate::network::model::CausalLm;
use crate::network::token_rows::TokenRows;

/// The end of the key PEFT saves trained token rows under.
pub const TOKENS_SUFFIX: &str = ".token_adapter.trainable_tokens_delta";

/// The key of the input embedding's trained rows in an adapter file of `model`.
pub fn tokens_key(model: &CausalLm) -> String {
    format!("{PEFT_PREFIX}{}.embed_tokens{TOKENS_SUFFIX}", model.config.text_prefix)
}

/// The key of an untied head's trained rows.
pub fn head_tokens_key() -> String {
    format!("{PEFT_PREFIX}lm_head{TOKENS_SUFFIX}")
}

/// The end of the key PEFT saves a resized vocabulary table under (`save_embedding_layers`).
pub const TABLE_SUFFIX: &str = ".token_adapter.base_layer.weight";

/// Checks ids for the embedding of `model`: some, each once, each in the vocabulary.
fn check_ids(model: &CausalLm, ids: &[u32]) -> Result<()> {
    let vocab = model.config.vocab_size;
    if ids.is_empty() {
        return Err(CoreError::Invalid("trainable_token_indices is empty".into()));
    }
    if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(CoreError::Invalid(format!("trainable token {id} is outside the vocabulary of {vocab}")));
    }
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(CoreError::Invalid(format!("trainable token {} is listed twice", w[0])));
    }
    Ok(())
}

/// Makes the rows of `indices` trainable (the input embedding's; an untied head's when named),
/// starting from the tables' values (PEFT's `init_weights=True`).
pub fn attach_new_tokens(model: &mut CausalLm, indices: &TokenIndices, trainable: bool) -> Result<()> {
    let (embed, head) = split(model, indices)?;
    let device = model.device();
    if let Some(ids) = embed {
        let values = model.model.embed_tokens.rows(ids, &device)?;
        model.model.embed_tokens.tokens = Some(rows(ids, values, trainable));
    }
    if let Some(ids) = head {
        // The head's rows are its weight's rows: [vocab, hidden] as the embedding's.
        let weight = model.lm_head.weight.to_f32(&device);
        let idx = Tensor::<1, burn::tensor::Int>::from_data(
            TensorData::new(ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>(), [ids.len()]),
            &device,
        );
        model.head_tokens = Some(rows(ids, weight.select(0, idx), trainable));
    }
    Ok(())
}

/// The embedding's and the head's ids of `indices`, checked against `model`.
fn split<'a>(model: &CausalLm, indices: &'a TokenIndices) -> Result<(Option<&'a [u32]>, Option<&'a [u32]>)> {
    if let Some(other) = indices.unsupported() {
        return Err(CoreError::Invalid(format!(
            "trainable tokens on '{other}': lora trains those of embed_tokens and lm_head"
        )));
    }
    let (embed, head) = (indices.ids_for("embed_tokens"), indices.ids_for("lm_head"));
    if head.is_some() && model.config.tie_word_embeddings {
        return Err(CoreError::Invalid(
            "trainable tokens on lm_head of a model whose head is its embedding (tie_word_embeddings): the \
             embed_tokens rows train both"
                .into(),
        ));
    }
    for ids in embed.iter().chain(head.iter()) {
        check_ids(model, ids)?;
    }
    Ok((embed, head))
}

fn rows(ids: &[u32], values: Tensor<2>, trainable: bool) -> TokenRows {
    let values = if trainable { values.autodiff().require_grad() } else { values };
    TokenRows { indices: ids.to_vec(), values }
}

/// Attaches the trained rows of an adapter file (`names`, the ids from `cfg`) in folder `dir`. Ids
/// beyond the base's vocabulary are tokens added to the tokenizer the adapter folder carries: the
/// model grows to that tokenizer's size first, as transformers' `resize_token_embeddings` before
/// PEFT loads such an adapter.
pub(crate) fn attach_from_file(
    model: &mut CausalLm,
    dir: &std::path::Path,
    file: &SafetensorsFile,
    names: &[String],
    cfg: &AdapterConfig,
    trainable: bool,
) -> Result<()> {
    let path = file.path().to_path_buf();
    let bad = |name: &str, m: String| CoreError::safetensors(path.clone(), format!("'{name}': {m}"));
    let Some(indices) = &cfg.trainable_token_indices else {
        return Err(bad(
            &names[0],
            "trained token rows, but adapter_config.json has no trainable_token_indices".into(),
        ));
    };
    // PEFT saves the resized tables whole beside the rows when the vocabulary grew.
    let tables: Vec<&String> = names.iter().filter(|n| n.ends_with(TABLE_SUFFIX)).collect();
    let names: Vec<&String> = names.iter().filter(|n| n.ends_with(TOKENS_SUFFIX)).collect();
    if !tables.is_empty() {
        let table = |key: String| -> Result<Option<Tensor<2>>> {
            if !tables.contains(&&key) {
                return Ok(None);
            }
            let (values, shape) = file.to_f32(&key)?;
            if shape.len() != 2 {
                return Err(bad(&key, format!("shape {shape:?}; a vocabulary table is 2-D")));
            }
            Ok(Some(Tensor::<2>::from_data(TensorData::new(values, [shape[0], shape[1]]), &model.device())))
        };
        let embed_key = format!("{PEFT_PREFIX}{}.embed_tokens{TABLE_SUFFIX}", model.config.text_prefix);
        let head_key = format!("{PEFT_PREFIX}lm_head{TABLE_SUFFIX}");
        if let Some(other) = tables.iter().find(|k| ***k != embed_key && ***k != head_key) {
            return Err(bad(other, format!("expected '{embed_key}' or '{head_key}'")));
        }
        let Some(embed) = table(embed_key.clone())? else {
            return Err(bad(&head_key, "a saved head without the embedding".into()));
        };
        model.take_vocab_tables(embed, table(head_key)?).map_err(|e| bad(&embed_key, e.to_string()))?;
    }
    let needed = ["embed_tokens", "lm_head"]
        .iter()
        .filter_map(|m| indices.ids_for(m))
        .flatten()
        .map(|&id| id as usize + 1)
        .max()
        .unwrap_or(0);
    if needed > model.config.vocab_size {
        let tokenizer = dir.join("tokenizer.json");
        let size = tokenizers::Tokenizer::from_file(&tokenizer).map(|t| t.get_vocab_size(true)).map_err(|e| {
            bad(
                &names[0],
                format!(
                    "token {} is beyond the base's vocabulary of {}, and {} cannot tell the added tokens: {e}",
                    needed - 1,
                    model.config.vocab_size,
                    tokenizer.display()
                ),
            )
        })?;
        model.grow_vocab(needed.max(size))?;
    }
    let (embed, head) = split(model, indices).map_err(|e| bad(&names[0], e.to_string()))?;
    let h = model.config.hidden_size;
    let device = model.device();
    for name in names {
        let ids = if *name == tokens_key(model) {
            embed
        } else if *name == head_tokens_key() && model.config.tie_word_embeddings {
            // PEFT saves a tied head's rows too: the embedding's, which train both.
            continue;
        } else if *name == head_tokens_key() {
            head
        } else {
            return Err(bad(name, format!("expected '{}' or '{}'", tokens_key(model), head_tokens_key())));
        };
        let ids = ids.ok_or_else(|| bad(name, "trainable_token_indices names no ids for it".into()))?;
        let (values, shape) = file.to_f32(name)?;
        if shape != [ids.len(), h] {
            return Err(bad(name, format!("shape {shape:?} for {} tokens of width {h}", ids.len())));
        }
        let t = rows(ids, Tensor::<2>::from_data(TensorData::new(values, [ids.len(), h]), &device), trainable);
        if *name == head_tokens_key() {
            model.head_tokens = Some(t);
        } else {
            model.model.embed_tokens.tokens = Some(t);
        }
    }
    Ok(())
}

/// The trained rows to save: (key, shape, values) of the embedding's and the head's.
pub(crate) fn saved(model: &CausalLm) -> Result<Vec<(String, Vec<usize>, Vec<f32>)>> {
    let mut out = Vec::new();
    for (key, t) in [(tokens_key(model), &model.model.embed_tokens.tokens), (head_tokens_key(), &model.head_tokens)] {
        if let Some(t) = t {
            let values = crate::kernels::host::to_f32_vec(t.values.clone().inner())?;
            out.push((key, t.values.dims().to_vec(), values));
        }
    }
    Ok(out)
}
