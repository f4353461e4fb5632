//! A GGUF model written out as a Hugging Face folder (`config.json`, `model.safetensors` in f32,
//! `tokenizer.json`, `tokenizer_config.json`), tensor by tensor: what `lora merge` folds into when its
//! base is a `.gguf` file. The weights are the dequantized values, q/k rows back in Hugging Face's order.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use lora_formats::gguf::GgufFile;
use safetensors::tensor::{Dtype, View};
use serde_json::json;

use crate::error::{CoreError, Result};
use crate::io::weights::Weights;

/// A tensor dequantized when the safetensors writer asks for its bytes.
struct Lazy<'a> {
    weights: &'a Weights,
    name: String,
    shape: Vec<usize>,
}

impl View for Lazy<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        // Every tensor's type and shape were checked before writing began.
        let (values, _) = self.weights.read_f32(&self.name, &self.shape).expect("checked before writing");
        Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * 4
    }
}

/// Writes the GGUF model at `path` as a Hugging Face folder `dir` (created; must not exist).
pub fn gguf_to_folder(path: &Path, dir: &Path) -> Result<()> {
    let file = GgufFile::open(path).map_err(|e| CoreError::Gguf(e.to_string()))?;
    if file.tensor("rope_freqs.weight").is_some() {
        return Err(CoreError::Gguf(format!(
            "{}: its rotary schedule is stored as rope_freqs, which config.json cannot express; merge into the \
             Hugging Face folder it came from",
            path.display()
        )));
    }
    let cfg_json = crate::io::gguf::model::config_json(&file)?;
    let config = crate::io::gguf::model::config(&file)?;
    let (tok_json, bos, eos, pad, template) = crate::io::gguf::tokenizer::tokenizer_json(&file)
        .map_err(|m| CoreError::Tokenizer { path: path.to_path_buf(), message: m })?;
    let tokens: Vec<String> = tok_json["model"]["vocab"]
        .as_object()
        .map(|v| {
            let mut t: Vec<(u64, String)> = v.iter().map(|(k, id)| (id.as_u64().unwrap_or(0), k.clone())).collect();
            t.sort();
            t.into_iter().map(|(_, k)| k).collect()
        })
        .unwrap_or_default();
    let mut names = Vec::new();
    let qwen35 = lora_formats::gguf::qwen35::is_qwen35(&crate::io::gguf::model::architecture(&file)?);
    // llama.cpp's names and layouts differ from Hugging Face's tensor by tensor in a qwen35 file
    // (io::gguf::qwen35), and a mixture of experts' are stacked: write what the configuration loads
    // (experts one by one, as transformers 5 saves them), read back through the inverse transforms;
    // a multi-token-prediction block stays behind.
    let by_config = qwen35 || config.moe.is_some();
    if by_config {
        names = config.expected_tensors();
    }
    for t in &file.tensors {
        if t.ggml_type().is_none() {
            return Err(CoreError::Gguf(format!(
                "{}: tensor '{}' has type {}, which lora cannot read",
                path.display(),
                t.name,
                lora_formats::gguf::GgmlType::name_of_id(t.type_id)
            )));
        }
        if by_config {
            continue;
        }
        let hf = lora_formats::gguf::hf_tensor_name(&t.name).ok_or_else(|| {
            CoreError::Gguf(format!("{}: tensor '{}' has no Hugging Face name", path.display(), t.name))
        })?;
        let qk = t.name.contains(".attn_q.") || t.name.contains(".attn_k.");
        if t.dims.is_empty() || (qk && t.name.ends_with(".weight") && t.dims.len() != 2) {
            return Err(CoreError::Gguf(format!(
                "{}: tensor '{}' has dimensions {:?}",
                path.display(),
                t.name,
                t.dims
            )));
        }
        names.push((hf, t.shape()));
    }
    let weights = Weights::open_gguf(file, &config)?;
    std::fs::create_dir_all(dir).map_err(|e| CoreError::io(dir, e))?;
    let views: BTreeMap<String, Lazy<'_>> =
        names.into_iter().map(|(name, shape)| (name.clone(), Lazy { weights: &weights, name, shape })).collect();
    let st = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, None, &st).map_err(|e| CoreError::safetensors(&st, e.to_string()))?;
    let write = |name: &str, v: &serde_json::Value| {
        crate::io::safetensors_write::write_atomic(
            &dir.join(name),
            serde_json::to_string_pretty(v).expect("json").as_bytes(),
        )
    };
    let mut cfg_json = cfg_json;
    cfg_json["model_type"] = json!(config.architecture.model_type());
    cfg_json["torch_dtype"] = json!("float32");
    write("config.json", &cfg_json)?;
    // The tokenizer the model is used with elsewhere (training, generate): a tokenizer.json beside the
    // file when there is one, else the file's own.
    if let Some(beside) = crate::io::tokenizer::gguf_side_dir(path) {
        for name in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
            let from = beside.join(name);
            if from.is_file() {
                std::fs::copy(&from, dir.join(name)).map_err(|e| CoreError::io(&from, e))?;
            }
        }
        return Ok(());
    }
    write("tokenizer.json", &tok_json)?;
    let token = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize)).cloned();
    let mut tcfg = json!({ "tokenizer_class": "PreTrainedTokenizerFast" });
    for (k, id) in [("bos_token", bos), ("eos_token", eos), ("pad_token", pad)] {
        if let Some(t) = token(id) {
            tcfg[k] = json!(t);
        }
    }
    if let Some(t) = template {
        tcfg["chat_template"] = json!(t);
    }
    write("tokenizer_config.json", &tcfg)
}
