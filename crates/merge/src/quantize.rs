//! `lora quantize`: a model folder written as a bitsandbytes 4-bit checkpoint, the format transformers
//! writes with `save_pretrained` after `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")`
//! (`lora_formats::bnb4bit` has the layout). Every decoder linear weight becomes NF4 (blocks of 64,
//! optionally double-quantized scales); embeddings, norms, biases and the head keep their dtype, as
//! transformers leaves them.
//!
//! Streaming, one tensor at a time: a weight's codes are computed twice (once for its quant state,
//! whose double-quantization offset depends on every block, once to write), so memory holds one
//! tensor's values, never the model.

use std::path::{Path, PathBuf};

use lora_formats::bnb4bit::{parts, quantization_config};
use serde_json::{Value, json};

use crate::card;
use crate::error::{MergeError, Result};
use crate::fold::is_decoder_linear;
use crate::model_dir::ModelDir;
use crate::nf4::Nf4Tensor;
use crate::output_dir::OutputDir;
use crate::safetensors::{PlannedTensor, ShardedWriter};
use crate::stream;

/// Options of `lora quantize`.
#[derive(Debug, Clone, Default)]
pub struct QuantizeOptions {
    /// Quantize the block scales too (`bnb_4bit_use_double_quant`).
    pub double_quant: bool,
    /// Largest shard in bytes (0: one file).
    pub shard_size: u64,
    /// Replace an existing output folder.
    pub force: bool,
}

/// What `lora quantize` did.
#[derive(Debug, Clone)]
pub struct QuantizeReport {
    /// The output folder.
    pub out: PathBuf,
    /// Weights written in 4 bit.
    pub quantized: usize,
    /// Tensors copied as they are.
    pub kept: usize,
    /// Bytes of tensor data written.
    pub bytes: u64,
}

/// The f32 values of tensor `name`.
fn values(model: &ModelDir, name: &str) -> Vec<f32> {
    let t = model.get(name).expect("listed");
    let mut v = vec![0f32; t.info.numel()];
    crate::source::Source::Mapped(t).read(0, &mut v);
    v
}

/// Whether tensor `name` of `model` becomes 4-bit: a 2-D float weight of a decoder linear layer.
fn quantized(model: &ModelDir, name: &str) -> bool {
    let t = model.get(name).expect("listed");
    is_decoder_linear(name) && t.info.shape.len() == 2 && t.info.dtype.is_float()
}

/// Writes `base` (a Hugging Face folder) to `out` as a bitsandbytes 4-bit NF4 checkpoint.
pub fn quantize_model(base: &Path, out: &Path, opts: &QuantizeOptions) -> Result<QuantizeReport> {
    crate::safetensors::catch_read_failures(|| quantize_inner(base, out, opts))
}

fn quantize_inner(base: &Path, out: &Path, opts: &QuantizeOptions) -> Result<QuantizeReport> {
    let config_path = base.join("config.json");
    if !config_path.is_file() {
        return Err(MergeError::folder(base, "no config.json: lora quantizes a model folder"));
    }
    let model_config = lora_formats::hf_config::ModelConfig::from_file(&config_path)?;
    if model_config.quantization.is_some() {
        return Err(MergeError::folder(base, "already a quantized checkpoint (quantization_config)"));
    }
    let model = ModelDir::open(base)?;
    let names: Vec<String> = model.names().map(str::to_string).collect();
    // Plan: each 4-bit weight's parts (quantized once here for its quant state's length), every
    // other tensor as it is.
    let mut planned = Vec::new();
    for name in &names {
        let t = model.get(name).expect("listed");
        if quantized(&model, name) {
            let q = Nf4Tensor::quantize(&values(&model, name), &t.info.shape, opts.double_quant);
            for (n, dtype, shape, _) in parts(name, &q, t.info.dtype) {
                planned.push(PlannedTensor { name: n, dtype, shape });
            }
        } else {
            planned.push(PlannedTensor { name: name.clone(), dtype: t.info.dtype, shape: t.info.shape.clone() });
        }
    }
    let out_dir = OutputDir::create(out, opts.force)?;
    let shard = if opts.shard_size == 0 { u64::MAX } else { opts.shard_size };
    let writer = ShardedWriter::create(out_dir.path(), &planned, shard)?;
    // Written in the planned order: `index` is each tensor's place in the plan.
    let (mut index, mut quantized_count, mut kept, mut bytes) = (0, 0, 0, 0u64);
    for name in &names {
        let t = model.get(name).expect("listed");
        if quantized(&model, name) {
            let q = Nf4Tensor::quantize(&values(&model, name), &t.info.shape, opts.double_quant);
            for (_, _, _, data) in parts(name, &q, t.info.dtype) {
                writer.write(index, 0, &data)?;
                bytes += data.len() as u64;
                index += 1;
            }
            quantized_count += 1;
        } else {
            stream::copy_tensor(&writer, index, t)?;
            bytes += (t.info.end - t.info.begin) as u64;
            index += 1;
            kept += 1;
        }
    }
    writer.finish()?;
    out_dir.copy_side_files(base)?;
    if let Some(config) = model.config() {
        let mut config = config.clone();
        let compute = model_config.dtype.clone().unwrap_or_else(|| "float32".into());
        // What lora keeps dense beside the language model (a vision tower, mtp.*) is named, so that
        // transformers does not look for 4-bit weights there; the head it skips by itself.
        let carried: Vec<&str> =
            model_config.architecture.spec().carried.iter().map(|p| p.trim_end_matches('.')).collect();
        let skip = if carried.is_empty() { Value::Null } else { json!(carried) };
        if let Some(map) = config.as_object_mut() {
            // As transformers writes it (BitsAndBytesConfig.to_dict()).
            map.insert("quantization_config".into(), quantization_config(opts.double_quant, &compute, skip));
        }
        out_dir.write_json("config.json", &config)?;
    }
    out_dir.write_text(
        "README.md",
        &crate::card::model_card(
            &base.display().to_string(),
            &format!(
                "The base quantized to 4 bit with `lora quantize`: every decoder linear layer in bitsandbytes' NF4 \
                 (blocks of 64{}), embeddings, norms and the head kept in their dtype. Loads with transformers + \
                 bitsandbytes as a `BitsAndBytesConfig(load_in_4bit=True)` checkpoint.",
                if opts.double_quant { ", double-quantized scales" } else { "" }
            ),
            &card::base_card_line(base),
        ),
    )?;
    out_dir.commit()?;
    Ok(QuantizeReport { out: out.to_path_buf(), quantized: quantized_count, kept, bytes })
}
