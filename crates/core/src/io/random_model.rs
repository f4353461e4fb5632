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
