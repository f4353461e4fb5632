//! A JSON field that Hugging Face tools write as one value or as a list of them (`eos_token_id` in
//! `config.json`, `layers_to_transform` in `adapter_config.json`).

use serde::{Deserialize, Serialize};

/// One value, or several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// One value.
    One(T),
    /// Several values (Llama 3 lists several EOS ids).
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    /// The values as a list.
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            Self::One(v) => vec![v.clone()],
            Self::Many(v) => v.clone(),
        }
    }
}
