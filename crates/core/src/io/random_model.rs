//! Random Llama-shaped model folders for benchmarks and tests: weights are generated while written,
//! tensor by tensor, so that even a multi-GB model never sits in memory.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::{Dtype, View};

use crate::error::{CoreError, Result};

/// Shape of a random Llama.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LlamaShape {
    /// Model width.
    pub hidden: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// MLP width.
    pub inter: usize,
    /// Vocabulary.
    pub vocab: usize,
    /// Whether the head shares the embedding matrix (otherwise `lm_head.weight` is written).
    pub tied: bool,
}

/// A tensor whose bytes are generated when written.
pub struct RandomTensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Stored dtype.
    pub dtype: Dtype,
    /// Seed of the values.
    pub seed: u64,
    /// Constant value (norm weights) instead of random.
    pub constant: Option<f32>,
}

impl View for RandomTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let n: usize = self.shape.iter().product();
        let mut state = self.seed;
        let mut out = Vec::with_capacity(self.data_len());
        for _ in 0..n {
            let x = match self.constant {
                Some(c) => c,
                None => {
                    // splitmix64 -> uniform in [-0.05, 0.05)
                    state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let mut z = state;
                    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                    z ^= z >> 31;
                    ((z >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
                }
            };
            match self.dtype {
                Dtype::BF16 => out.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes()),
                Dtype::F16 => out.extend_from_slice(&half::f16::from_f32(x).to_le_bytes()),
                _ => out.extend_from_slice(&x.to_le_bytes()),
            }
        }
        Cow::Owned(out)
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.bitsize() / 8
    }
}

/// Writes `config.json` and `model.safetensors` of a random Llama into `dir`.
/// `dtype` is "f32", "bf16" or "f16"; values are uniform in [-0.05, 0.05), norms are 1.
pub fn write_random_llama(dir: &Path, o: &LlamaShape, dtype: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| CoreError::io(dir, e))?;
    let dtype = match dtype {
        "bf16" => Dtype::BF16,
        "f16" => Dtype::F16,
        _ => Dtype::F32,
    };
    let hd = o.hidden / o.heads;
    let mut t: BTreeMap<String, RandomTensor> = BTreeMap::new();
    let mut seed = 1u64;
    let mut add = |name: String, shape: Vec<usize>, constant: Option<f32>| {
        seed += 1;
        t.insert(name, RandomTensor { shape, dtype, seed, constant });
    };
    add("model.embed_tokens.weight".into(), vec![o.vocab, o.hidden], None);
    for l in 0..o.layers {
        let p = format!("model.layers.{l}");
        add(format!("{p}.input_layernorm.weight"), vec![o.hidden], Some(1.0));
        add(format!("{p}.post_attention_layernorm.weight"), vec![o.hidden], Some(1.0));
        add(format!("{p}.self_attn.q_proj.weight"), vec![o.heads * hd, o.hidden], None);
        add(format!("{p}.self_attn.k_proj.weight"), vec![o.kv_heads * hd, o.hidden], None);
        add(format!("{p}.self_attn.v_proj.weight"), vec![o.kv_heads * hd, o.hidden], None);
        add(format!("{p}.self_attn.o_proj.weight"), vec![o.hidden, o.heads * hd], None);
        add(format!("{p}.mlp.gate_proj.weight"), vec![o.inter, o.hidden], None);
        add(format!("{p}.mlp.up_proj.weight"), vec![o.inter, o.hidden], None);
        add(format!("{p}.mlp.down_proj.weight"), vec![o.hidden, o.inter], None);
    }
    add("model.norm.weight".into(), vec![o.hidden], Some(1.0));
    if !o.tied {
        add("lm_head.weight".into(), vec![o.vocab, o.hidden], None);
    }
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": o.vocab, "hidden_size": o.hidden, "intermediate_size": o.inter,
        "num_hidden_layers": o.layers, "num_attention_heads": o.heads, "num_key_value_heads": o.kv_heads,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
        "tie_word_embeddings": o.tied, "torch_dtype": match dtype { Dtype::BF16 => "bfloat16", Dtype::F16 => "float16", _ => "float32" },
    });
    crate::io::safetensors_write::write_atomic(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&config).expect("json").as_bytes(),
    )?;
    let tmp = dir.join("model.safetensors.tmp");
    safetensors::serialize_to_file(t, None, &tmp).map_err(|e| CoreError::safetensors(&tmp, e.to_string()))?;
    std::fs::rename(&tmp, dir.join("model.safetensors")).map_err(|e| CoreError::io(dir, e))
}

/// Writes a random model of any architecture lora runs, from its `config.json` (`config`), into
/// `dir`: every tensor the model loads (`ModelConfig::expected_tensors`), dense ones in `dtype`
/// ("f32", "bf16", "f16"), and with `four_bit` (`Some(double_quant)`) every decoder linear weight as
/// a bitsandbytes 4-bit NF4 weight, with `quantization_config` in config.json. Weights are uniform in
/// [-0.05, 0.05); norms are neutral (1, or 0 where the norm scales by 1 + weight), `A_log` and
/// `dt_bias` 0. Written tensor by tensor into shards of at most 5 GB: a 4-bit 27B model never
/// exists dense, in memory or on disk.
pub fn write_random_model(
    dir: &Path,
    mut config: serde_json::Value,
    dtype: &str,
    four_bit: Option<bool>,
) -> Result<()> {
    use lora_formats::bnb4bit::{parts, quantization_config};
    use lora_formats::dtype::DType as FDType;
    use lora_formats::hf_config::{HfConfig, ModelConfig};
    use lora_formats::safetensors::{PlannedTensor, ShardedWriter};

    let hf =
        HfConfig::from_value(config.clone()).map_err(|e| CoreError::Invalid(format!("random model config: {e:?}")))?;
    let model = ModelConfig::resolve(&hf).map_err(|m| CoreError::Invalid(format!("random model config: {m}")))?;
    let (st, fd, torch) = match dtype {
        "bf16" => (Dtype::BF16, FDType::BF16, "bfloat16"),
        "f16" => (Dtype::F16, FDType::F16, "float16"),
        _ => (Dtype::F32, FDType::F32, "float32"),
    };
    let linear = lora_formats::hf_config::decoder_linear_names();
    // Routed and shared experts' projections are 4-bit too, as a bitsandbytes checkpoint of an MoE
    // model with its experts as linear layers (transformers 4) stores them; routers are not.
    let expert = |m: &str| (m.contains(".experts.") || m.contains(".shared_expert.")) && !m.ends_with("_gate");
    let is_linear = |name: &str| {
        lora_formats::hf_config::layer_index(name).is_some()
            && name.strip_suffix(".weight").is_some_and(|m| linear.iter().any(|l| m.ends_with(l)) || expert(m))
    };
    // Neutral norms: the scale is 1 (`1 + 0` for zero-centred ones, whose stored weight is 0).
    let constant = |name: &str| -> Option<f32> {
        if name.ends_with("A_log") || name.ends_with("dt_bias") {
            Some(0.0)
        } else if name.ends_with("norm.weight") {
            Some(if model.zero_centred_norms && !name.ends_with("linear_attn.norm.weight") { 0.0 } else { 1.0 })
        } else {
            None
        }
    };
    let tensors: Vec<(String, Vec<usize>, RandomTensor)> = model
        .expected_tensors()
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let t = RandomTensor { shape: shape.clone(), dtype: st, seed: i as u64 + 2, constant: constant(&name) };
            (name, shape, t)
        })
        .collect();
    let quantize = |t: &RandomTensor, double_quant: bool| {
        let bytes = t.data();
        let mut values = vec![0f32; t.shape.iter().product()];
        lora_formats::dtype::decode_f32(&bytes, fd, &mut values);
        lora_formats::nf4::Nf4Tensor::quantize(&values, &t.shape, double_quant)
    };
    // Plan (a 4-bit weight is quantized once here for the length of its quant state), then write.
    let mut planned = Vec::new();
    for (name, shape, t) in &tensors {
        match four_bit {
            Some(dq) if is_linear(name) => {
                for (n, d, s, _) in parts(name, &quantize(t, dq), fd) {
                    planned.push(PlannedTensor { name: n, dtype: d, shape: s });
                }
            }
            _ => planned.push(PlannedTensor { name: name.clone(), dtype: fd, shape: shape.clone() }),
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| CoreError::io(dir, e))?;
    let shards = |e: lora_formats::FormatError| CoreError::Invalid(e.to_string());
    let writer = ShardedWriter::create(dir, &planned, 5_000_000_000).map_err(shards)?;
    let mut index = 0;
    for (name, _, t) in &tensors {
        match four_bit {
            Some(dq) if is_linear(name) => {
                for (_, _, _, bytes) in parts(name, &quantize(t, dq), fd) {
                    writer.write(index, 0, &bytes).map_err(shards)?;
                    index += 1;
                }
            }
            _ => {
                writer.write(index, 0, &t.data()).map_err(shards)?;
                index += 1;
            }
        }
    }
    writer.finish().map_err(shards)?;
    if let Some(map) = config.as_object_mut() {
        map.insert("torch_dtype".into(), serde_json::json!(torch));
        if let Some(dq) = four_bit {
            map.insert("quantization_config".into(), quantization_config(dq, torch, serde_json::Value::Null));
        }
    }
    crate::io::safetensors_write::write_atomic(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&config).expect("json").as_bytes(),
    )
}
