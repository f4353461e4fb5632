//! Models in GGUF files (llama.cpp, Ollama): the configuration from the `{arch}.*` keys and the tensors
//! under their Hugging Face names, so that a `.gguf` file loads wherever a model folder does.
//!
//! References: llama.cpp `convert_hf_to_gguf.py` (what it writes) and `gguf-py/gguf/tensor_mapping.py`
//! (the names). Its `llama` converter permutes the rows of `attn_q` / `attn_k` (weights and biases)
//! from Hugging Face's rotate-half layout to ggml's interleaved rotary layout; [`unpermute_rows`]
//! undoes it. `qwen2` and `qwen3` files keep Hugging Face's layout.

use lora_formats::gguf::qwen35::{self, LinearHeads};
use lora_formats::gguf::{GgufFile, Value};
use serde_json::{Value as Json, json};

use crate::error::{CoreError, Result};
use crate::network::config::{HfConfig, ModelConfig, RopeScaling};

/// The `architectures` entry of a GGUF architecture lora reads (`lora_formats::hf_config`'s
/// declarations: the first with that llama.cpp name, so `llama` reads as Llama).
fn hf_class(arch: &str) -> Option<&'static str> {
    lora_formats::hf_config::ARCHITECTURES.iter().find(|s| s.gguf == Some(arch)).map(|s| s.class)
}

/// The GGUF name of a Hugging Face tensor name, or `None` for a name GGUF files do not hold.
pub use lora_formats::gguf::gguf_tensor_name as gguf_name;

/// The GGUF architecture of a file (`general.architecture`).
pub fn architecture(g: &GgufFile) -> Result<String> {
    let arch = g
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| CoreError::Gguf(format!("{}: no general.architecture key", g.path().display())))?;
    if hf_class(arch).is_none() {
        return Err(CoreError::Gguf(format!(
            "{}: architecture '{arch}' is not supported; lora reads GGUF models of the llama (Llama, Mistral, \
             Mixtral), qwen2, qwen3, qwen3moe, qwen35 (Qwen3.5) and qwen35moe architectures",
            g.path().display()
        )));
    }
    Ok(arch.to_string())
}

/// Whether the file's converter permuted the q/k rows (the `llama` architecture).
pub fn permutes_qk(arch: &str) -> bool {
    arch == "llama"
}

/// The configuration of a GGUF model, resolved as a `config.json` of the same model would be.
pub fn config(g: &GgufFile) -> Result<ModelConfig> {
    let path = g.path().display().to_string();
    let cfg = config_json(g)?;
    let hf: HfConfig = serde_json::from_value(cfg).map_err(|e| CoreError::Gguf(format!("{path}: {e}")))?;
    let mut config = ModelConfig::resolve(&hf).map_err(|m| CoreError::Gguf(format!("{path}: {m}")))?;
    if let Some(t) = g.tensor("rope_freqs.weight") {
        // Llama 3.1-style scaling is stored as llama.cpp's per-frequency divisors; the original
        // parameters are gone, and the divisors are what llama.cpp computes with.
        let factors = g.to_f32(t).map_err(|e| CoreError::Gguf(e.to_string()))?;
        if factors.len() != config.head_dim / 2 {
            return Err(CoreError::Gguf(format!(
                "{path}: rope_freqs.weight has {} values; head_dim {} needs {}",
                factors.len(),
                config.head_dim,
                config.head_dim / 2
            )));
        }
        config.rope_scaling = RopeScaling::Factors(factors);
    }
    Ok(config)
}

/// Typed reads of a file's `{arch}.*` keys, with errors naming the file and the key.
pub(crate) struct Meta<'a> {
    pub g: &'a GgufFile,
    pub arch: &'a str,
    pub path: String,
}

impl Meta<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    /// Key `k` as `as_type` reads it, if present; `what` names the type in the error.
    fn typed<'v, T>(&'v self, k: &str, what: &str, as_type: impl Fn(&'v Value) -> Option<T>) -> Result<Option<T>> {
        match self.g.get(&self.key(k)) {
            None => Ok(None),
            Some(v) => {
                as_type(v).map(Some).ok_or_else(|| self.error(format!("{} must be {what}, found {v}", self.key(k))))
            }
        }
    }

    /// An integer key, if present.
    pub fn int(&self, k: &str) -> Result<Option<u64>> {
        self.typed(k, "an integer", Value::as_u64)
    }

    /// An integer key that must be present.
    pub fn need(&self, k: &str) -> Result<u64> {
        self.int(k)?.ok_or_else(|| self.error(format!("missing key {}", self.key(k))))
    }

    /// A number key, if present.
    pub fn float(&self, k: &str) -> Result<Option<f64>> {
        self.typed(k, "a number", Value::as_f64)
    }

    /// An array key, if present.
    pub fn array(&self, k: &str) -> Result<Option<&[Value]>> {
        self.typed(k, "an array", Value::as_array)
    }

    /// The vocabulary size: the width of `token_embd.weight`.
    pub fn vocab_size(&self) -> Result<u64> {
        let embed = self.g.tensor("token_embd.weight").ok_or_else(|| self.error("no token_embd.weight tensor"))?;
        Ok(embed.dims.get(1).copied().unwrap_or(0))
    }

    /// Adds the `tokenizer.ggml.*` special token ids the file has to a config.json object.
    pub fn insert_special_tokens(&self, cfg: &mut Json) {
        let obj = cfg.as_object_mut().expect("an object");
        for (k, name) in
            [("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"), ("pad_token_id", "padding_token_id")]
        {
            if let Some(id) = self.g.get(&format!("tokenizer.ggml.{name}")).and_then(Value::as_u64) {
                obj.insert(k.into(), Json::from(id));
            }
        }
    }

    /// An error about this file.
    pub fn error(&self, m: impl std::fmt::Display) -> CoreError {
        CoreError::Gguf(format!("{}: {m}", self.path))
    }
}

/// The `config.json` (Hugging Face's keys) of a GGUF model, without `rope_freqs` (which config.json
/// cannot express).
pub fn config_json(g: &GgufFile) -> Result<Json> {
    let arch = architecture(g)?;
    let meta = Meta { g, arch: &arch, path: g.path().display().to_string() };
    if qwen35::is_qwen35(&arch) {
        return crate::io::gguf::qwen35::config_json(&meta);
    }
    if let Some(t) = g.get(&meta.key("rope.scaling.type")).and_then(Value::as_str)
        && t != "none"
    {
        return Err(meta.error(format!("{} = '{t}' is not supported", meta.key("rope.scaling.type"))));
    }
    let heads = meta.need("attention.head_count")?;
    let moe = moe_keys(&meta)?;
    let mut cfg = json!({
        "architectures": [hf_class(&arch).expect("checked")],
        "vocab_size": meta.vocab_size()?,
        "hidden_size": meta.need("embedding_length")?,
        "intermediate_size": match moe {
            // A mixture-of-experts model's dense width is only that of its dense layers, which
            // llama.cpp's MoE files have none of.
            Some(_) => meta.int("feed_forward_length")?.unwrap_or(0),
            None => meta.need("feed_forward_length")?,
        },
        "num_hidden_layers": meta.need("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": meta.int("attention.head_count_kv")?.unwrap_or(heads),
        "rms_norm_eps": meta.float("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
        "rope_theta": meta.float("rope.freq_base")?.unwrap_or(10000.0),
        "max_position_embeddings": meta.int("context_length")?.unwrap_or(2048),
        "tie_word_embeddings": g.tensor("output.weight").is_none(),
        "attention_bias": g.tensor("blk.0.attn_output.bias").is_some(),
        "mlp_bias": g.tensor("blk.0.ffn_gate.bias").is_some(),
    });
    if let Some(hd) = meta.int("attention.key_length")? {
        cfg["head_dim"] = Json::from(hd);
    }
    if let Some(moe) = moe {
        let obj = cfg.as_object_mut().expect("an object");
        obj.remove("mlp_bias");
        obj.extend(moe.as_object().expect("an object").clone());
    }
    meta.insert_special_tokens(&mut cfg);
    Ok(cfg)
}

/// The mixture-of-experts keys of a `qwen3moe` file or a Mixtral `llama` file (`expert_count` > 0),
/// as config.json spells them, or `None` for a dense model. llama.cpp runs both with every layer
/// sparse and the top k weights renormalised (`build_moe_ffn`'s `norm_w`), which these keys say.
fn moe_keys(m: &Meta) -> Result<Option<Json>> {
    let experts = m.int("expert_count")?.unwrap_or(0);
    if experts == 0 {
        if m.arch == "qwen3moe" {
            return Err(m.error("a qwen3moe file without qwen3moe.expert_count"));
        }
        return Ok(None);
    }
    let used = m.need("expert_used_count")?;
    if used == 0 || used > experts {
        return Err(m.error(format!("{}.expert_used_count {used} must be between 1 and {experts}", m.arch)));
    }
    Ok(Some(match m.arch {
        "qwen3moe" => json!({
            "num_experts": experts,
            "num_experts_per_tok": used,
            "moe_intermediate_size": m.need("expert_feed_forward_length")?,
            "norm_topk_prob": true,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
        }),
        _ => json!({
            "architectures": ["MixtralForCausalLM"],
            "num_local_experts": experts,
            "num_experts_per_tok": used,
            "intermediate_size": m.int("expert_feed_forward_length")?.map_or_else(|| m.need("feed_forward_length"), Ok)?,
        }),
    }))
}

/// Undoes the converter's permutation of q/k rows: the GGUF row `h·hd + 2j + s` holds the Hugging Face
/// row `h·hd + s·hd/2 + j` (head h, j < hd/2, s ∈ {0, 1}). `values` is row-major with `rows` rows of
/// `cols` values (a bias is one column).
pub fn unpermute_rows(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    lora_formats::gguf::rotary_rows(values, rows, cols, heads, false)
}

/// One module of a llama.cpp LoRA adapter, in PEFT's layout.
#[derive(Debug, Clone)]
pub struct GgufLoraModule {
    /// The Hugging Face module path.
    pub module: String,
    /// A `[r, in]` row-major.
    pub a: Vec<f32>,
    /// B `[out, r]` row-major, q/k rows back in Hugging Face's order.
    pub b: Vec<f32>,
    /// Rank.
    pub r: usize,
    /// Input width.
    pub d_in: usize,
    /// Output width.
    pub d_out: usize,
}

/// A llama.cpp LoRA adapter (`general.type = adapter`, `adapter.type = lora`): its alpha and modules.
pub fn read_lora_adapter(g: &GgufFile, heads: usize, kv_heads: usize) -> Result<(f32, Vec<GgufLoraModule>)> {
    read_lora_adapter_for(g, heads, kv_heads, None, None)
}

/// [`read_lora_adapter`], checking that the adapter was made for the `base_arch` GGUF architecture.
pub fn read_lora_adapter_for(
    g: &GgufFile,
    heads: usize,
    kv_heads: usize,
    base_arch: Option<&str>,
    linear_heads: Option<LinearHeads>,
) -> Result<(f32, Vec<GgufLoraModule>)> {
    let path = g.path().display().to_string();
    let s = |k: &str| g.get(k).and_then(Value::as_str);
    if s("general.type") != Some("adapter") || s("adapter.type") != Some("lora") {
        return Err(CoreError::Gguf(format!(
            "{path}: not a LoRA adapter (general.type = {:?}, adapter.type = {:?})",
            s("general.type"),
            s("adapter.type")
        )));
    }
    let alpha = g
        .get("adapter.lora.alpha")
        .and_then(Value::as_f64)
        .ok_or_else(|| CoreError::Gguf(format!("{path}: no adapter.lora.alpha")))? as f32;
    let arch =
        s("general.architecture").ok_or_else(|| CoreError::Gguf(format!("{path}: no general.architecture key")))?;
    if let Some(base) = base_arch
        && base != arch
    {
        return Err(CoreError::Gguf(format!("{path}: an adapter for '{arch}' models, not for this '{base}' model")));
    }
    let permuted = permutes_qk(arch);
    let mut modules = Vec::new();
    for t in &g.tensors {
        let Some(base) = t.name.strip_suffix(".lora_a") else { continue };
        if t.dims.len() == 3 {
            modules.extend(expert_lora_modules(g, t, base)?);
            continue;
        }
        let module = if qwen35::is_qwen35(arch) {
            base.strip_suffix(".weight").and_then(qwen35::hf_module)
        } else {
            lora_formats::gguf::hf_tensor_name(base)
                .and_then(|n| n.strip_suffix(".weight").map(str::to_string))
                .filter(|m| lora_formats::gguf::is_linear_module(m))
        }
        .ok_or_else(|| CoreError::Gguf(format!("{path}: tensor '{}' adapts no module lora knows", t.name)))?;
        let b_name = format!("{base}.lora_b");
        let tb = g.tensor(&b_name).ok_or_else(|| CoreError::Gguf(format!("{path}: '{}' has no {b_name}", t.name)))?;
        let (&[d_in, r], &[r_b, d_out]) = (t.dims.as_slice(), tb.dims.as_slice()) else {
            return Err(CoreError::Gguf(format!("{path}: '{}' / '{b_name}' are not matrices", t.name)));
        };
        if r != r_b || r == 0 {
            return Err(CoreError::Gguf(format!("{path}: ranks of '{}' ({r}) and '{b_name}' ({r_b}) differ", t.name)));
        }
        let (d_in, r, d_out) = (d_in as usize, r as usize, d_out as usize);
        let read = |t| g.to_f32(t).map_err(|e| CoreError::Gguf(e.to_string()));
        let mut a = read(t)?;
        let mut b = read(tb)?;
        if qwen35::is_qwen35(arch) {
            // The value heads back from llama.cpp's tiled order, where the converter reordered them.
            let heads = linear_heads.ok_or_else(|| {
                CoreError::Gguf(format!("{path}: a qwen35 adapter needs its base's linear-attention heads"))
            })?;
            let (rows_of_b, columns_of_a) = qwen35::lora_transforms(&module, &heads);
            b = qwen35::apply(rows_of_b, &b, d_out, r, &heads, false);
            a = qwen35::apply(columns_of_a, &a, r, d_in, &heads, false);
        }
        let is_q = module.ends_with("self_attn.q_proj");
        if permuted && (is_q || module.ends_with("self_attn.k_proj")) {
            b = unpermute_rows(&b, d_out, r, if is_q { heads } else { kv_heads });
        }
        modules.push(GgufLoraModule { module, a, b, r, d_in, d_out });
    }
    if modules.is_empty() {
        return Err(CoreError::Gguf(format!("{path}: holds no .lora_a / .lora_b tensors")));
    }
    Ok((alpha, modules))
}

/// A 3-D llama.cpp LoRA pair on stacked experts (`blk.N.ffn_{gate,up,down,gate_up}_exps.weight`,
/// `lora_a` `[E, r, in]`, `lora_b` `[E, out, r]`, as `build_lora_mm_id` applies them) as one module per
/// expert on lora's layers (`model.layers.N.mlp.experts.E.gate_up_proj` / `down_proj`). A pair on the
/// gate or up projections alone updates its half of the expert's `gate_up_proj`, the other half's
/// rows of B zero; gate and up pairs both present give two modules on the layer, which add.
fn expert_lora_modules(g: &GgufFile, ta: &lora_formats::gguf::TensorInfo, base: &str) -> Result<Vec<GgufLoraModule>> {
    use lora_formats::gguf::experts::{ExpertProjection, GATE_UP_EXPS, stacked_projection};
    let path = g.path().display().to_string();
    let bad = |m: String| CoreError::Gguf(format!("{path}: '{}': {m}", ta.name));
    let module = base.strip_suffix(".weight").ok_or_else(|| bad("adapts no module lora knows".into()))?;
    let merged = module.strip_suffix(&format!(".{}", GATE_UP_EXPS.trim_end_matches(".weight")));
    let (layer, projection) = match (merged, stacked_projection(module)) {
        (Some(blk), _) => (blk.strip_prefix("blk.").and_then(|n| n.parse::<usize>().ok()), None),
        (None, Some((l, p))) => (Some(l), Some(p)),
        (None, None) => (None, None),
    };
    let layer = layer.ok_or_else(|| bad("3-D LoRA factors on a tensor that holds no routed experts".into()))?;
    let b_name = format!("{base}.lora_b");
    let tb = g.tensor(&b_name).ok_or_else(|| bad(format!("no {b_name}")))?;
    let (&[d_in, r, n], &[r_b, d_out, n_b]) = (ta.dims.as_slice(), tb.dims.as_slice()) else {
        return Err(bad(format!("{b_name} is not 3-D as its lora_a is")));
    };
    if r != r_b || n != n_b || r == 0 {
        return Err(bad(format!("lora_a {:?} and {b_name} {:?} disagree in rank or experts", ta.dims, tb.dims)));
    }
    let (d_in, r, n, d_out) = (d_in as usize, r as usize, n as usize, d_out as usize);
    let read = |t| g.to_f32(t).map_err(|e| CoreError::Gguf(e.to_string()));
    let (a, b) = (read(ta)?, read(tb)?);
    // Where the pair's output rows land in lora's layer: (name, rows of the layer, first row).
    let (name, rows, first) = match projection {
        None => ("gate_up_proj", d_out, 0),
        Some(ExpertProjection::Gate) => ("gate_up_proj", 2 * d_out, 0),
        Some(ExpertProjection::Up) => ("gate_up_proj", 2 * d_out, d_out),
        Some(ExpertProjection::Down) => ("down_proj", d_out, 0),
    };
    Ok((0..n)
        .map(|e| {
            let mut b_e = vec![0f32; rows * r];
            b_e[first * r..(first + d_out) * r].copy_from_slice(&b[e * d_out * r..(e + 1) * d_out * r]);
            GgufLoraModule {
                module: format!("model.layers.{layer}.mlp.experts.{e}.{name}"),
                a: a[e * r * d_in..(e + 1) * r * d_in].to_vec(),
                b: b_e,
                r,
                d_in,
                d_out: rows,
            }
        })
        .collect())
}
