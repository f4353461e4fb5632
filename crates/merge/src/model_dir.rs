//! A Hugging Face model folder (or a single `.safetensors` file) as a map from tensor name to bytes.
//!
//! Both layouts transformers writes are read: one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`. Every shard is memory-mapped; nothing is read until asked for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{MergeError, Result};
use crate::safetensors::{SafetensorsFile, TensorInfo};

/// A model's weights, memory-mapped.
#[derive(Debug)]
pub struct ModelDir {
    path: PathBuf,
    files: Vec<SafetensorsFile>,
    /// Tensor name → index into `files`.
    index: BTreeMap<String, usize>,
    config: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// A borrowed tensor of a [`ModelDir`]: its file and header entry.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    /// The file holding it.
    pub file: &'a SafetensorsFile,
    /// Its header entry.
    pub info: &'a TensorInfo,
}

impl TensorRef<'_> {
    /// The raw bytes.
    pub fn bytes(&self) -> &[u8] {
        self.file.bytes(self.info)
    }
}

impl ModelDir {
    /// Opens a model folder, or a single `.safetensors` file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if path.is_file() {
            let file = SafetensorsFile::open(&path)?;
            let index = file.tensors().keys().map(|k| (k.clone(), 0)).collect();
            return Ok(Self { path, files: vec![file], index, config: None });
        }
        if !path.is_dir() {
            return Err(MergeError::folder(&path, "no such model folder or .safetensors file"));
        }
        let index_path = path.join("model.safetensors.index.json");
        let single = path.join("model.safetensors");
        let mut files = Vec::new();
        let mut index = BTreeMap::new();
        if index_path.is_file() {
            let text = std::fs::read(&index_path).map_err(|e| MergeError::io(&index_path, e))?;
            let shard_index: ShardIndex =
                serde_json::from_slice(&text).map_err(|e| MergeError::json(&index_path, e))?;
            let mut by_file: BTreeMap<String, usize> = BTreeMap::new();
            for (name, file) in &shard_index.weight_map {
                let k = match by_file.get(file) {
                    Some(&k) => k,
                    None => {
                        files.push(SafetensorsFile::open(path.join(file))?);
                        by_file.insert(file.clone(), files.len() - 1);
                        files.len() - 1
                    }
                };
                if !files[k].tensors().contains_key(name) {
                    return Err(MergeError::folder(
                        &index_path,
                        format!("lists tensor '{name}' in {file}, which does not hold it"),
                    ));
                }
                index.insert(name.clone(), k);
            }
        } else if single.is_file() {
            let file = SafetensorsFile::open(&single)?;
            index = file.tensors().keys().map(|k| (k.clone(), 0)).collect();
            files.push(file);
        } else {
            return Err(MergeError::folder(
                &path,
                "no model.safetensors or model.safetensors.index.json (only safetensors weights are read)",
            ));
        }
        let config_path = path.join("config.json");
        let config = if config_path.is_file() {
            let text = std::fs::read(&config_path).map_err(|e| MergeError::io(&config_path, e))?;
            Some(serde_json::from_slice(&text).map_err(|e| MergeError::json(config_path, e))?)
        } else {
            None
        };
        Ok(Self { path, files, index, config })
    }

    /// The folder (or file) opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `config.json`, when the folder has one.
    pub fn config(&self) -> Option<&serde_json::Value> {
        self.config.as_ref()
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// Whether tensor `name` is a bitsandbytes 4-bit weight (it has a quant state).
    pub fn is_four_bit(&self, name: &str) -> bool {
        self.index.contains_key(&format!("{name}{}", lora_formats::bnb4bit::NF4_STATE))
    }

    /// The shape tensor `name` stands for: its own, or a 4-bit weight's logical `[out, in]`.
    pub fn logical_shape(&self, name: &str) -> Result<Vec<usize>> {
        let t = self.require(name)?;
        if !self.is_four_bit(name) {
            return Ok(t.info.shape.clone());
        }
        let state = self.require(&format!("{name}{}", lora_formats::bnb4bit::NF4_STATE))?;
        lora_formats::bnb4bit::quant_state_shape(state.bytes())
            .map_err(|m| MergeError::Mismatch(format!("{}: '{name}': {m}", self.path.display())))
    }

    /// The 4-bit weight `name` read into NF4.
    pub fn four_bit(&self, name: &str) -> Result<crate::nf4::Nf4Tensor> {
        let get = |n: &str| {
            let t = self.get(n)?;
            Some((t.info.dtype, t.info.shape.clone(), std::borrow::Cow::Borrowed(t.file.bytes(t.info))))
        };
        lora_formats::bnb4bit::read_nf4(name, get)
            .map(|s| s.nf4)
            .map_err(|m| MergeError::Mismatch(format!("{}: {m}", self.path.display())))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the model has no tensors.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The tensor `name`, if present.
    pub fn get(&self, name: &str) -> Option<TensorRef<'_>> {
        let &k = self.index.get(name)?;
        let file = &self.files[k];
        Some(TensorRef { file, info: &file.tensors()[name] })
    }

    /// The tensor `name`, or an error naming the folder.
    pub fn require(&self, name: &str) -> Result<TensorRef<'_>> {
        self.get(name).ok_or_else(|| MergeError::Mismatch(format!("{}: has no tensor '{name}'", self.path.display())))
    }

    /// The number of transformer layers: `num_hidden_layers` of config.json, else one more than the
    /// largest `layers.N.` index in the tensor names.
    pub fn num_layers(&self) -> usize {
        if let Some(n) = self.config.as_ref().and_then(|c| c["num_hidden_layers"].as_u64()) {
            return n as usize;
        }
        self.names().filter_map(layer_index).max().map_or(0, |m| m + 1)
    }
}

/// The layer index in a tensor name such as `model.layers.12.mlp.up_proj.weight`.
pub fn layer_index(name: &str) -> Option<usize> {
    let rest = &name[name.find("layers.")? + "layers.".len()..];
    rest.split('.').next()?.parse().ok()
}
