//! A PEFT adapter folder: `adapter_config.json` plus `adapter_model.safetensors`, indexed by module.
//!
//! PEFT saves each adapted module `M` as `base_model.model.M.lora_A.weight` (`[r, in]`) and
//! `base_model.model.M.lora_B.weight` (`[out, r]`); embeddings as `M.lora_embedding_A` (`[r, vocab]`)
//! and `M.lora_embedding_B` (`[dim, r]`). Any other tensor (a `modules_to_save` copy such as
//! `lm_head.weight`, or a trained bias) replaces the base tensor of the same name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::adapter::{AdapterConfig, LoraDelta};
use crate::dtype::{DType, decode_f32};
use crate::error::{MergeError, Result};
use crate::safetensors::{SafetensorsFile, TensorInfo};

/// The prefix PEFT puts before module names in saved adapters.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// One adapted module: its two factors and what they update.
#[derive(Debug, Clone)]
pub struct LoraModule {
    /// Module name in the base model (`model.layers.0.self_attn.q_proj`).
    pub module: String,
    /// The base tensor updated (`<module>.weight`).
    pub target: String,
    /// `lora_A`: `[r, in]`.
    pub a: TensorInfo,
    /// `lora_B`: `[out, r]`.
    pub b: TensorInfo,
    /// Rank (rows of A).
    pub rank: usize,
    /// Update scale `alpha / r` (or `alpha / sqrt(r)`).
    pub scale: f64,
    /// Whether the base weight is stored `[in, out]` (embeddings, `fan_in_fan_out`): ΔW is transposed.
    pub transposed: bool,
    /// DoRA's magnitude vector (`<module>.lora_magnitude_vector`, `[out]`), for a DoRA adapter.
    pub magnitude: Option<TensorInfo>,
}

impl LoraModule {
    /// The shape of the base tensor this module updates.
    pub fn target_shape(&self) -> Vec<usize> {
        let (out, inp) = (self.b.shape[0], self.a.shape[1]);
        if self.transposed { vec![inp, out] } else { vec![out, inp] }
    }
}

/// A PEFT LoRA adapter, memory-mapped.
#[derive(Debug)]
pub struct Adapter {
    dir: PathBuf,
    /// Its `adapter_config.json`.
    pub config: AdapterConfig,
    file: SafetensorsFile,
    /// Adapted modules, by module name.
    pub modules: BTreeMap<String, LoraModule>,
    /// Tensors saved whole, by base tensor name.
    pub replacements: BTreeMap<String, TensorInfo>,
    /// Adapters on routed experts in PEFT's flattened layout (`…mlp.experts[.base_layer]`), by
    /// module name: (lora_A, lora_B). [`crate::fold_experts`] maps them onto the base's experts.
    pub experts: BTreeMap<String, (TensorInfo, TensorInfo)>,
    /// PEFT's trainable tokens: rows `ids` of the embedding (and of an untied head) replaced by the
    /// saved values (`<module>.token_adapter.trainable_tokens_delta`, `[ids, hidden]`).
    pub token_rows: Vec<TokenRows>,
    /// Vocabulary tables PEFT saved whole beside the rows when the vocabulary grew
    /// (`<module>.token_adapter.base_layer.weight`), by the base tensor they stand for.
    pub tables: BTreeMap<String, TensorInfo>,
    /// The vocabulary size of the `tokenizer.json` the folder carries, read once (see
    /// [`Adapter::tokenizer_size`]).
    tokenizer_size: Option<usize>,
}

/// An adapter's trained token rows.
#[derive(Debug, Clone)]
pub struct TokenRows {
    /// The embedding tensor they replace rows of (`model.embed_tokens.weight`).
    pub target: String,
    /// The rows, in the saved order.
    pub ids: Vec<u32>,
    /// The saved values.
    pub info: TensorInfo,
}

impl Adapter {
    /// Opens an adapter folder.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let config_path = dir.join("adapter_config.json");
        if !config_path.is_file() {
            return Err(MergeError::folder(&dir, "not a PEFT adapter folder: no adapter_config.json"));
        }
        let config = AdapterConfig::load(&config_path)?;
        let weights = dir.join("adapter_model.safetensors");
        if !weights.is_file() {
            return Err(MergeError::folder(
                &dir,
                "no adapter_model.safetensors (adapter_model.bin pickles are not read; re-save with safe_serialization=True)",
            ));
        }
        let file = SafetensorsFile::open(&weights)?;
        let mut a_of: BTreeMap<String, (TensorInfo, bool)> = BTreeMap::new();
        let mut b_of: BTreeMap<String, (TensorInfo, bool)> = BTreeMap::new();
        let mut replacements = BTreeMap::new();
        let mut magnitudes: BTreeMap<String, TensorInfo> = BTreeMap::new();
        let mut token_rows = Vec::new();
        let mut tables = BTreeMap::new();
        for (key, info) in file.tensors() {
            let name = key.strip_prefix(PEFT_PREFIX).unwrap_or(key);
            let name = name.replace(".default.", ".");
            let name = name.strip_suffix(".default").unwrap_or(&name).to_string();
            let bad = |m: String| MergeError::safetensors(&weights, format!("tensor '{key}': {m}"));
            if !info.dtype.is_float() {
                return Err(bad(format!("{:?} factors; expected a float type", info.dtype)));
            }
            if let Some(m) = name.strip_suffix(".token_adapter.base_layer.weight") {
                if info.shape.len() != 2 {
                    return Err(bad(format!("shape {:?}; a vocabulary table is 2-D", info.shape)));
                }
                tables.insert(format!("{m}.weight"), info.clone());
                continue;
            }
            if let Some(m) = name.strip_suffix(".token_adapter.trainable_tokens_delta") {
                let module = m.rsplit('.').next().unwrap_or(m);
                // A tied head's rows (PEFT saves them beside the embedding's) have the embedding's ids.
                let ids =
                    match config.trainable_token_indices.as_ref().map(|t| {
                        t.ids_for(module).or(if module == "lm_head" { t.ids_for("embed_tokens") } else { None })
                    }) {
                        Some(Some(ids)) => ids.to_vec(),
                        Some(None) => return Err(bad(format!("trainable_token_indices names no ids for '{module}'"))),
                        None => return Err(bad("trained token rows without trainable_token_indices".into())),
                    };
                if info.shape.len() != 2 || info.shape[0] != ids.len() {
                    return Err(bad(format!("shape {:?} for {} trainable tokens", info.shape, ids.len())));
                }
                token_rows.push(TokenRows { target: format!("{m}.weight"), ids, info: info.clone() });
                continue;
            }
            if let Some(m) = name.strip_suffix(".lora_magnitude_vector") {
                if !config.use_dora {
                    return Err(bad("a DoRA magnitude vector in an adapter without use_dora".into()));
                }
                if info.shape.len() != 1 {
                    return Err(bad(format!("shape {:?}; a magnitude vector is 1-D", info.shape)));
                }
                magnitudes.insert(m.to_string(), info.clone());
                continue;
            }
            let (slot, module, embedding) = if let Some(m) = name.strip_suffix(".lora_A.weight") {
                (&mut a_of, m, false)
            } else if let Some(m) = name.strip_suffix(".lora_B.weight") {
                (&mut b_of, m, false)
            } else if let Some(m) = name.strip_suffix(".lora_embedding_A") {
                (&mut a_of, m, true)
            } else if let Some(m) = name.strip_suffix(".lora_embedding_B") {
                (&mut b_of, m, true)
            } else {
                replacements.insert(name.replace(".modules_to_save.", "."), info.clone());
                continue;
            };
            if info.shape.len() != 2 {
                return Err(bad(format!("shape {:?}; LoRA factors are 2-D", info.shape)));
            }
            slot.insert(module.to_string(), (info.clone(), embedding));
        }
        let mut modules = BTreeMap::new();
        let mut experts = BTreeMap::new();
        for (module, (a, embedding)) in a_of {
            let (b, _) = b_of.remove(&module).ok_or_else(|| {
                MergeError::safetensors(&weights, format!("module '{module}' has lora_A but no lora_B"))
            })?;
            let rank = a.shape[0];
            if b.shape[1] != rank {
                return Err(MergeError::safetensors(
                    &weights,
                    format!(
                        "module '{module}': lora_A is {:?} and lora_B is {:?}; their ranks differ",
                        a.shape, b.shape
                    ),
                ));
            }
            if crate::fold_experts::is_expert_module(&module) {
                experts.insert(module, (a, b));
                continue;
            }
            let transposed = embedding || config.fan_in_fan_out;
            let scale = config.scale_for(&module, rank);
            let target = format!("{module}.weight");
            let magnitude = magnitudes.remove(&module);
            if config.use_dora {
                let m = magnitude.as_ref().ok_or_else(|| {
                    MergeError::safetensors(&weights, format!("DoRA module '{module}' has no lora_magnitude_vector"))
                })?;
                if transposed || m.shape[0] != b.shape[0] {
                    return Err(MergeError::safetensors(
                        &weights,
                        format!(
                            "DoRA module '{module}': magnitude {:?} for lora_B {:?}{}",
                            m.shape,
                            b.shape,
                            if transposed {
                                " (DoRA on embeddings and fan_in_fan_out layers is not supported)"
                            } else {
                                ""
                            }
                        ),
                    ));
                }
            }
            modules.insert(module.clone(), LoraModule { module, target, a, b, rank, scale, transposed, magnitude });
        }
        if let Some(module) = b_of.keys().next() {
            return Err(MergeError::safetensors(&weights, format!("module '{module}' has lora_B but no lora_A")));
        }
        if let Some(module) = magnitudes.keys().next() {
            return Err(MergeError::safetensors(&weights, format!("'{module}' has a magnitude vector but no lora_A")));
        }
        let tokenizer_size = read_tokenizer_size(&dir);
        Ok(Self { dir, config, file, modules, replacements, experts, token_rows, tables, tokenizer_size })
    }

    /// The adapter folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The size of the vocabulary of the `tokenizer.json` the folder carries (an adapter trained with
    /// added special tokens), if it has one: one more than its largest id.
    pub fn tokenizer_size(&self) -> Option<usize> {
        self.tokenizer_size
    }

    /// The weights file.
    pub fn file(&self) -> &SafetensorsFile {
        &self.file
    }

    /// Number of trainable parameters in the factors.
    pub fn num_parameters(&self) -> usize {
        let experts: usize = self.experts.values().map(|(a, b)| a.numel() + b.numel()).sum();
        self.modules.values().map(|m| m.a.numel() + m.b.numel()).sum::<usize>() + experts
    }

    /// An error for a command that cannot handle adapters on routed experts yet (`what` it is),
    /// when this adapter has any.
    pub fn refuse_experts(&self, what: &str) -> Result<()> {
        match self.experts.keys().next() {
            Some(m) => Err(MergeError::Mismatch(format!(
                "{}: module '{m}' adapts routed experts, which {what} does not support yet; `lora merge BASE \
                 ADAPTER` folds it into the base",
                self.dir.display()
            ))),
            None => Ok(()),
        }
    }

    /// Decodes a tensor of the adapter to f32.
    pub fn tensor_f32(&self, info: &TensorInfo) -> Vec<f32> {
        let mut v = vec![0f32; info.numel()];
        decode_f32(self.file.bytes(info), info.dtype, &mut v);
        v
    }

    /// The update of `module` times `weight`, ready to add to the base tensor.
    pub fn delta(&self, module: &LoraModule, weight: f64) -> LoraDelta {
        let delta = LoraDelta::from_factors(
            &self.tensor_f32(&module.a),
            &self.tensor_f32(&module.b),
            module.rank,
            module.a.shape[1],
            module.b.shape[0],
            (weight * module.scale) as f32,
            module.transposed,
        );
        match &module.magnitude {
            Some(m) => delta.with_magnitude(self.tensor_f32(m)),
            None => delta,
        }
    }

    /// An error for a command that cannot handle DoRA adapters yet (`what` it is), when this is one.
    pub fn refuse_dora(&self, what: &str) -> Result<()> {
        if self.config.use_dora {
            return Err(MergeError::Mismatch(format!(
                "{}: a DoRA adapter (use_dora), which {what} does not support yet; `lora merge BASE ADAPTER` folds it \
                 into the base",
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// Finds the module whose update targets base tensor `name`.
    pub fn module_for_target(&self, name: &str) -> Option<&LoraModule> {
        self.modules.get(name.strip_suffix(".weight")?)
    }

    /// The element type of the factors (of the first module).
    pub fn dtype(&self) -> Option<DType> {
        self.modules.values().next().map(|m| m.a.dtype)
    }
}

/// One more than the largest id of the `tokenizer.json` in `dir`, if it has a readable one.
fn read_tokenizer_size(dir: &Path) -> Option<usize> {
    let text = std::fs::read(dir.join("tokenizer.json")).ok()?;
    let json: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let added = json["added_tokens"].as_array().into_iter().flatten().filter_map(|t| t["id"].as_u64());
    let vocab = json["model"]["vocab"].as_object().into_iter().flatten().filter_map(|(_, id)| id.as_u64());
    added.chain(vocab).max().map(|m| m as usize + 1)
}
