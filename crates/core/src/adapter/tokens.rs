//! PEFT's trainable tokens beside LoRA (`LoraConfig(trainable_token_indices=[...])`): the trained rows
//! of the input embedding ([`crate::network::token_rows`]), saved as PEFT saves them,
//! `base_model.model.<prefix>.embed_tokens.token_adapter.trainable_tokens_delta` `[n, hidden]` (the
//! rows' values), with the ids in `adapter_config.json`. On a tied model PEFT ties the head's token
//! adapter to the embedding's and saves it once; so does lora.

use burn::tensor::{Tensor, TensorData};
use lora_formats::safetensors::SafetensorsFile;

use crate::adapter::PEFT_PREFIX;
use crate::adapter::config::AdapterConfig;
use crate::error::{CoreError, Result};
use crate::network::model::CausalLm;
use crate::network::token_rows::TokenRows;

/// The end of the key PEFT saves trained token rows under.
pub const TOKENS_SUFFIX: &str = ".token_adapter.trainable_tokens_delta";

/// The key of the input embedding's trained rows in an adapter file of `model`.
pub fn tokens_key(model: &CausalLm) -> String {
    format!("{PEFT_PREFIX}{}.embed_tokens{TOKENS_SUFFIX}", model.config.text_prefix)
}

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

/// Makes the rows `ids` of the input embedding trainable, starting from the table's values (PEFT's
/// `init_weights=True`).
pub fn attach_new_tokens(model: &mut CausalLm, ids: &[u32], trainable: bool) -> Result<()> {
    check_ids(model, ids)?;
    let device = model.device();
    let values = model.model.embed_tokens.rows(ids, &device)?;
    attach(model, ids, values, trainable);
    Ok(())
}

fn attach(model: &mut CausalLm, ids: &[u32], values: Tensor<2>, trainable: bool) {
    let values = if trainable { values.autodiff().require_grad() } else { values };
    model.model.embed_tokens.tokens = Some(TokenRows { indices: ids.to_vec(), values });
}

/// Attaches the trained rows of an adapter file (`name`, the ids from `cfg`).
pub(crate) fn attach_from_file(
    model: &mut CausalLm,
    file: &SafetensorsFile,
    name: &str,
    cfg: &AdapterConfig,
    trainable: bool,
) -> Result<()> {
    let path = file.path().to_path_buf();
    let bad = |m: String| CoreError::safetensors(path.clone(), format!("'{name}': {m}"));
    let ids = match &cfg.trainable_token_indices {
        None => return Err(bad("trained token rows, but adapter_config.json has no trainable_token_indices".into())),
        Some(t) => t
            .embed_ids()
            .map_err(|m| bad(format!("trainable tokens on '{m}': lora trains those of the input embedding")))?,
    };
    if name != tokens_key(model) {
        return Err(bad(format!("expected the input embedding's, '{}'", tokens_key(model))));
    }
    check_ids(model, ids).map_err(|e| bad(e.to_string()))?;
    let (values, shape) = file.to_f32(name)?;
    let h = model.config.hidden_size;
    if shape != [ids.len(), h] {
        return Err(bad(format!("shape {shape:?} for {} tokens of width {h}", ids.len())));
    }
    let values = Tensor::<2>::from_data(TensorData::new(values, [ids.len(), h]), &model.device());
    attach(model, ids, values, trainable);
    Ok(())
}

/// The trained rows to save: (key, shape, values), if any.
pub(crate) fn saved(model: &CausalLm) -> Result<Option<(String, Vec<usize>, Vec<f32>)>> {
    let Some(t) = &model.model.embed_tokens.tokens else { return Ok(None) };
    let dims = t.values.dims().to_vec();
    let values = crate::kernels::host::to_f32_vec(t.values.clone().inner())?;
    Ok(Some((tokens_key(model), dims, values)))
}
