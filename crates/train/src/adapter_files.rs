//! What a run's adapter folder says of its recipe: `adapter_config.json`, the base's name, and the
//! special tokens `[data] add_special_tokens` adds (to the tokenizer, and as trainable token rows).

use lora_core::adapter::config::{AdapterConfig, LayerIndices, TargetModules, TokenIndices};
use lora_core::{CausalLm, Tokenizer};

use crate::recipe::{Recipe, Targets};

/// The adapter_config.json of a recipe's adapter.
pub fn adapter_config(recipe: &Recipe) -> AdapterConfig {
    let l = &recipe.lora;
    AdapterConfig {
        peft_type: "LORA".into(),
        task_type: Some("CAUSAL_LM".into()),
        base_model_name_or_path: Some(base_model_name(recipe)),
        r: l.r,
        lora_alpha: l.alpha,
        lora_dropout: l.dropout,
        target_modules: Some(match &l.targets {
            Targets::Names(n) => TargetModules::Names(n.clone()),
            Targets::Pattern(p) => TargetModules::Pattern(p.clone()),
        }),
        use_rslora: l.rslora,
        bias: "none".into(),
        fan_in_fan_out: false,
        // A moving start's adapter is saved converted, as a plain LoRA (base_init::converted_config).
        init_lora_weights: if l.init == "gaussian" { "gaussian".into() } else { true.into() },
        inference_mode: true,
        layers_to_transform: l.layers.clone().map(LayerIndices::Many),
        rank_pattern: Default::default(),
        alpha_pattern: Default::default(),
        modules_to_save: None,
        use_dora: l.use_dora,
        trainable_token_indices: l.trainable_token_indices.clone(),
        extra: Default::default(),
    }
}

/// How the adapter names its base: the Hub id when known, else the folder.
pub fn base_model_name(recipe: &Recipe) -> String {
    recipe.model.hub_id.clone().unwrap_or_else(|| recipe.model.base.display().to_string())
}

/// Adds `tokens` to the tokenizer as special tokens; returns every token's id and the (id, token)
/// of those the vocabulary lacked.
pub(crate) fn add_special_tokens(tokenizer: &mut Tokenizer, tokens: &[String]) -> (Vec<u32>, Vec<(u32, String)>) {
    if tokens.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let before = tokenizer.vocab_size();
    let ids = tokenizer.add_special_tokens(tokens);
    let added =
        ids.iter().zip(tokens).filter(|(id, _)| **id as usize >= before).map(|(id, t)| (*id, t.clone())).collect();
    (ids, added)
}

/// The recipe's trainable token rows with the special tokens' added: the embedding's, and an untied
/// head's too, so that the model learns to emit them.
pub(crate) fn with_special_tokens(
    indices: Option<TokenIndices>,
    special: &[u32],
    model: &CausalLm,
) -> Option<TokenIndices> {
    if special.is_empty() {
        return indices;
    }
    let union = |ids: Option<&[u32]>| -> Vec<u32> {
        let mut v: Vec<u32> = ids.unwrap_or_default().to_vec();
        v.extend(special.iter().filter(|id| !ids.unwrap_or_default().contains(id)));
        v
    };
    let embed = union(indices.as_ref().and_then(|t| t.ids_for("embed_tokens")));
    if model.config.tie_word_embeddings {
        return Some(TokenIndices::Ids(embed));
    }
    let head = union(indices.as_ref().and_then(|t| t.ids_for("lm_head")));
    Some(TokenIndices::ByModule([("embed_tokens".to_string(), embed), ("lm_head".to_string(), head)].into()))
}
