//! `lora export`: a PEFT LoRA adapter as a llama.cpp LoRA adapter (GGUF), the file
//! `convert_lora_to_gguf.py` writes, so that llama.cpp and Ollama apply it without Python.
//!
//! - Metadata: `general.type = "adapter"`, `adapter.type = "lora"`, `adapter.lora.alpha` (FLOAT32) and
//!   the base's `general.architecture`.
//! - Tensors `<gguf module>.weight.lora_a` / `.lora_b` hold PEFT's A `[r, in]` and B `[out, r]` as they
//!   are: ggml lists dimensions innermost first, so they read as `[in, r]` and `[r, out]` there.
//! - llama.cpp scales every module by `alpha / r` with one alpha; a module whose own scale differs
//!   (rsLoRA, `alpha_pattern`, `rank_pattern`) has the difference folded into its B, so that every
//!   module gets exactly PEFT's scale.
//! - For the `llama` architecture the rows of B for q and k are permuted as the converter permutes the
//!   base's q/k rows (Hugging Face's rotate-half layout to ggml's interleaved one).
//! - For `qwen35` (Qwen3.5) the value heads go from grouped to tiled order wherever the converter
//!   reorders the base weight: the rows of B for `in_proj_qkv` (its V rows), `in_proj_z`, `in_proj_a`
//!   and `in_proj_b`, the columns of A for `out_proj`. This is what llama.cpp's own
//!   `convert_lora_to_gguf.py` means to do, and fails to (L#21125).

use std::path::{Path, PathBuf};

use crate::adapter::Adapter;
use crate::error::{MergeError, Result};
use crate::gguf::qwen35::{self, LinearHeads, apply, lora_transforms};
use crate::gguf::{
    GgmlType, GgufFile, TensorOut, Value, encode_values, gguf_architecture, gguf_module, is_linear_module,
};
use lora_formats::hf_config::ModelConfig;

use crate::export_gguf_experts_lora::{ExpertShape, expert_pairs};

/// What the export needs to know about the base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseInfo {
    /// `general.architecture`: `llama`, `qwen2`, `qwen3`, `qwen3moe` or `qwen35`.
    pub architecture: String,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// The head shares the embedding matrix (llama.cpp then has no `output.weight` to adapt).
    pub tied: bool,
    /// `qwen35`: the Gated DeltaNet's heads, whose value heads the converter reorders.
    pub linear_heads: Option<LinearHeads>,
    /// A mixture-of-experts base's routed experts.
    pub experts: Option<ExpertShape>,
}

impl BaseInfo {
    /// From a model folder's `config.json` or a GGUF model file.
    pub fn of(base: &Path) -> Result<Self> {
        if base.is_file() {
            let g = GgufFile::open(base)?;
            let arch = g
                .get("general.architecture")
                .and_then(Value::as_str)
                .ok_or_else(|| MergeError::gguf(base, "no general.architecture key"))?
                .to_string();
            let int = |k: &str| g.get(&format!("{arch}.{k}")).and_then(Value::as_u64).map(|v| v as usize);
            let heads = int("attention.head_count").ok_or_else(|| MergeError::gguf(base, "no attention.head_count"))?;
            let kv_heads = int("attention.head_count_kv").unwrap_or(heads);
            let tied = g.tensor("output.weight").is_none();
            let linear_heads = match (int("ssm.group_count"), int("ssm.time_step_rank"), int("ssm.state_size")) {
                (Some(key_heads), Some(value_heads), Some(dim)) if qwen35::is_qwen35(&arch) => {
                    Some(LinearHeads { key_heads, value_heads, key_dim: dim, value_dim: dim })
                }
                _ if qwen35::is_qwen35(&arch) => return Err(MergeError::gguf(base, "no ssm.* head counts")),
                _ => None,
            };
            let experts = gguf_experts(&g);
            return Self::checked(base, Self { architecture: arch, heads, kv_heads, tied, linear_heads, experts });
        }
        let path = base.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| MergeError::io(&path, e))?;
        let cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| MergeError::json(&path, e))?;
        let model_type = cfg["model_type"].as_str().unwrap_or_default();
        if crate::export_gguf_qwen35::is_qwen3_5(&cfg) {
            let c = ModelConfig::from_file(&path)?;
            let moe = c.moe.is_some();
            let info = Self {
                architecture: if moe { "qwen35moe" } else { "qwen35" }.into(),
                heads: c.num_attention_heads,
                kv_heads: c.num_key_value_heads,
                tied: c.tie_word_embeddings,
                linear_heads: c.linear_attention.map(LinearHeads::from),
                experts: config_experts(&c),
            };
            return Self::checked(base, info);
        }
        let arch = gguf_architecture(model_type).ok_or_else(|| {
            MergeError::folder(
                base,
                format!(
                    "model_type '{model_type}' has no llama.cpp architecture lora can export to \
                     (llama, mistral, mixtral, qwen2, qwen3, qwen3_moe, qwen3_5)"
                ),
            )
        })?;
        let heads = cfg["num_attention_heads"]
            .as_u64()
            .ok_or_else(|| MergeError::folder(&path, "no num_attention_heads"))? as usize;
        let kv_heads = cfg["num_key_value_heads"].as_u64().map_or(heads, |v| v as usize);
        let tied = cfg["tie_word_embeddings"].as_bool().unwrap_or(false);
        let experts = match cfg.get("num_experts").or(cfg.get("num_local_experts")) {
            Some(v) if !v.is_null() => config_experts(&ModelConfig::from_file(&path)?),
            _ => None,
        };
        let info = Self { architecture: arch.to_string(), heads, kv_heads, tied, linear_heads: None, experts };
        Self::checked(base, info)
    }

    fn checked(base: &Path, info: Self) -> Result<Self> {
        if !["llama", "qwen2", "qwen3", "qwen3moe", "qwen35", "qwen35moe"].contains(&info.architecture.as_str()) {
            return Err(MergeError::gguf(
                base,
                format!(
                    "architecture '{}' is not supported (llama, qwen2, qwen3, qwen3moe, qwen35, qwen35moe)",
                    info.architecture
                ),
            ));
        }
        if info.heads == 0 || info.kv_heads == 0 {
            return Err(MergeError::folder(base, "attention head counts must be positive"));
        }
        if let Some(h) = info.linear_heads
            && (h.key_heads == 0 || h.value_heads % h.key_heads != 0)
        {
            return Err(MergeError::folder(base, "linear-attention value heads are not a multiple of the key heads"));
        }
        if let Some(h) = info.linear_heads
            && h.key_dim != h.value_dim
        {
            return Err(MergeError::folder(
                base,
                format!(
                    "linear_key_head_dim {} differs from linear_value_head_dim {}: llama.cpp's qwen35 takes both from \
                     one key (ssm.state_size) and cannot run this base",
                    h.key_dim, h.value_dim
                ),
            ));
        }
        Ok(info)
    }

    /// The GGUF module of a Hugging Face module, in this architecture's naming.
    fn gguf_module(&self, hf_module: &str) -> Option<String> {
        if qwen35::is_qwen35(&self.architecture) {
            qwen35::gguf_module(hf_module)
        } else {
            is_linear_module(hf_module).then(|| gguf_module(hf_module)).flatten()
        }
    }
}

/// The routed experts of a resolved configuration (the first sparse layer's shape).
fn config_experts(c: &ModelConfig) -> Option<ExpertShape> {
    c.moe.as_ref().map(|m| ExpertShape {
        count: m.num_experts,
        hidden: c.hidden_size,
        width: m.intermediate_size,
        merged_gate_up: false,
    })
}

/// The routed experts of a GGUF model, from its first layer's stacked down projections
/// (`{width, hidden, experts}`), and whether gate and up are one merged tensor.
fn gguf_experts(g: &GgufFile) -> Option<ExpertShape> {
    let down = g.tensors.iter().find(|t| t.name.ends_with(&format!(".{}", crate::gguf::experts::DOWN_EXPS)))?;
    let &[width, hidden, count] = down.dims.as_slice() else { return None };
    Some(ExpertShape {
        count: count as usize,
        hidden: hidden as usize,
        width: width as usize,
        merged_gate_up: g.tensors.iter().any(|t| t.name.ends_with(&format!(".{}", crate::gguf::experts::GATE_UP_EXPS))),
    })
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportReport {
    /// The output file.
    pub out: PathBuf,
    /// `general.architecture` of the base the adapter applies to.
    pub architecture: String,
    /// Modules exported.
    pub modules: usize,
    /// The alpha written (`adapter.lora.alpha`).
    pub alpha: f32,
    /// Modules whose scale was folded into B.
    pub folded: usize,
    /// Tensors written in another type than asked (Q8_0 needs rows of 32 values; they fall back to F16).
    pub fallbacks: Vec<String>,
}

/// Exports the PEFT adapter in `adapter_dir`, trained on `base`, to `out` as `ggml_type`.
pub fn export_adapter_gguf(
    adapter_dir: &Path,
    base: &Path,
    out: &Path,
    ggml_type: GgmlType,
    force: bool,
) -> Result<ExportReport> {
    crate::safetensors::catch_read_failures(|| export_inner(adapter_dir, base, out, ggml_type, force))
}

fn export_inner(adapter_dir: &Path, base: &Path, out: &Path, ggml_type: GgmlType, force: bool) -> Result<ExportReport> {
    if out.exists() && !force {
        return Err(MergeError::output_exists(&out));
    }
    let info = BaseInfo::of(base)?;
    let adapter = Adapter::open(adapter_dir)?;
    // llama.cpp applies B·A added to W; DoRA rescales W's rows, which no LoRA file can say.
    if adapter.config.use_dora {
        return Err(MergeError::Mismatch(format!(
            "{}: a DoRA adapter (use_dora) cannot be a llama.cpp LoRA adapter: llama.cpp adds B·A to the weight, and \
             DoRA also rescales its rows. Fold it (lora merge BASE ADAPTER -o merged) and export the merged model \
             (lora export merged -o model.gguf)",
            adapter_dir.display()
        )));
    }
    if let Some(t) = adapter.token_rows.first() {
        return Err(MergeError::Mismatch(format!(
            "{}: its trainable tokens {:?} replace rows of the embedding, which a llama.cpp LoRA adapter cannot \
             carry (it adds B·A products only); fold it (`lora merge BASE ADAPTER -o OUT`), then export OUT",
            adapter_dir.display(),
            t.ids
        )));
    }
    if !adapter.replacements.is_empty() {
        let names: Vec<&String> = adapter.replacements.keys().collect();
        return Err(MergeError::Mismatch(format!(
            "{}: modules_to_save tensors {names:?} cannot go into a llama.cpp LoRA adapter",
            adapter_dir.display()
        )));
    }
    // One alpha for the file: the one that gives the default rank its own scale.
    let r = adapter.config.r.max(1);
    let alpha = (adapter.config.scale_for("", r) * r as f64) as f32;
    let (expert_pairs, per_expert) = expert_pairs(&adapter, info.experts, alpha)?;
    // A tied head is the embedding matrix in llama.cpp: there is no `output.weight` to adapt.
    let unmapped: Vec<&str> = adapter
        .modules
        .values()
        .filter(|m| !per_expert.contains(&m.module))
        .filter(|m| info.gguf_module(&m.module).is_none() || (info.tied && m.module == "lm_head"))
        .map(|m| m.module.as_str())
        .collect();
    if !unmapped.is_empty() {
        return Err(MergeError::Mismatch(format!(
            "{}: llama.cpp cannot apply LoRA to {}",
            adapter_dir.display(),
            unmapped.join(", ")
        )));
    }
    let mut tensors = Vec::new();
    let (mut folded, mut fallbacks) = (0usize, Vec::new());
    let mut encode = |name: String, values: Vec<f32>, dims: Vec<u64>| -> Result<()> {
        let (t, data) = match encode_values(&values, ggml_type) {
            Ok(d) if ggml_type != GgmlType::Q8_0 || dims[0] % 32 == 0 => (ggml_type, d),
            _ => {
                fallbacks.push(name.clone());
                (GgmlType::F16, encode_values(&values, GgmlType::F16)?)
            }
        };
        tensors.push(TensorOut { name, dims, ggml_type: t, data });
        Ok(())
    };
    let expert_modules = expert_pairs.len();
    for (name, a, b, rank, d_in, d_out) in expert_pairs {
        let (n, r) = (a.len() / (rank * d_in), rank as u64);
        encode(format!("{name}.lora_a"), a, vec![d_in as u64, r, n as u64])?;
        encode(format!("{name}.lora_b"), b, vec![r, d_out as u64, n as u64])?;
    }
    for m in adapter.modules.values().filter(|m| !per_expert.contains(&m.module)) {
        let name = info.gguf_module(&m.module).expect("checked");
        let mut a = adapter.tensor_f32(&m.a); // [r, in]
        let mut b = adapter.tensor_f32(&m.b); // [out, r]
        let (rank, d_in, d_out) = (m.rank, m.a.shape[1], m.b.shape[0]);
        if m.transposed {
            return Err(MergeError::Mismatch(format!("{}: fan_in_fan_out modules cannot be exported", m.module)));
        }
        let wanted = m.scale as f32;
        let llama = alpha / rank as f32;
        if (wanted / llama - 1.0).abs() > 1e-6 {
            let k = wanted / llama;
            b.iter_mut().for_each(|v| *v *= k);
            folded += 1;
        }
        let is_q = m.module.ends_with("self_attn.q_proj");
        if info.architecture == "llama" && (is_q || m.module.ends_with("self_attn.k_proj")) {
            let heads = if is_q { info.heads } else { info.kv_heads };
            b = permute_rows(&b, d_out, rank, heads);
        }
        if let Some(heads) = &info.linear_heads {
            let (rows_of_b, columns_of_a) = lora_transforms(&m.module, heads);
            b = apply(rows_of_b, &b, d_out, rank, heads, true);
            a = apply(columns_of_a, &a, rank, d_in, heads, true);
        }
        encode(format!("{name}.weight.lora_a"), a, vec![d_in as u64, rank as u64])?;
        encode(format!("{name}.weight.lora_b"), b, vec![rank as u64, d_out as u64])?;
    }
    let modules = adapter.modules.len() - per_expert.len() + expert_modules;
    let metadata = vec![
        ("general.architecture".to_string(), Value::String(info.architecture.clone())),
        ("general.type".to_string(), Value::String("adapter".into())),
        ("adapter.type".to_string(), Value::String("lora".into())),
        ("adapter.lora.alpha".to_string(), Value::F32(alpha)),
    ];
    crate::gguf::write(out, &metadata, &tensors, force)?;
    Ok(ExportReport { out: out.to_path_buf(), architecture: info.architecture, modules, alpha, folded, fallbacks })
}

/// The converter's permutation of q/k rows: Hugging Face row `h·hd + s·hd/2 + j` goes to row
/// `h·hd + 2j + s` (head h, j < hd/2, s ∈ {0, 1}); `values` has `rows` rows of `cols` values.
pub fn permute_rows(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    crate::gguf::rotary_rows(values, rows, cols, heads, true)
}
