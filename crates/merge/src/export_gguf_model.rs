//! `lora export MODEL_DIR -o model.gguf`: a Hugging Face folder (a `lora merge` output, say) as a GGUF
//! model for llama.cpp and Ollama, as `convert_hf_to_gguf.py` writes it: the `{arch}.*` keys, the
//! tokenizer (`tokenizer.ggml.*`: byte-level BPE's tokens, types, merges and pre-tokenizer name, or
//! SentencePiece BPE's tokens, types and scores, the scores derived from the merges so that
//! llama.cpp merges as the folder does) and chat template, Llama 3.1's `rope_freqs`, GGUF tensor
//! names, and the `llama` architecture's q/k rows permuted. Tensors stream one at a time through
//! [`write_planned`]: the header is planned from the shapes, then each tensor is read, converted and
//! written, so memory stays at about one tensor. Qwen3.5 has its own plan
//! (`export_gguf_qwen35`) and the same writer.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::error::{MergeError, Result};
use crate::export_gguf::permute_rows;
use crate::export_gguf_experts::Rows;
use crate::gguf::sentencepiece::{self, token_type};
use crate::gguf::{GgmlType, TensorPlan, Value, encode_values, gguf_architecture, gguf_tensor_name};
use crate::model_dir::ModelDir;
use crate::source::Source;

/// What a model export wrote.
#[derive(Debug, Clone)]
pub struct ModelExportReport {
    /// The output file.
    pub out: PathBuf,
    /// `general.architecture`.
    pub architecture: String,
    /// Tensors written.
    pub tensors: usize,
    /// The pre-tokenizer name written.
    pub pre: String,
}

/// llama.cpp's name for a `tokenizer.json` pre-tokenizer, recognised by its structure.
fn pre_name(pre: &Json) -> Option<&'static str> {
    let byte_level = |j: &Json| j["type"] == "ByteLevel";
    match pre["type"].as_str()? {
        "ByteLevel" if pre["use_regex"].as_bool().unwrap_or(true) => Some("gpt-2"),
        "Sequence" => {
            let parts = pre["pretokenizers"].as_array()?;
            match parts.as_slice() {
                [d, b] if d["type"] == "Digits" && d["individual_digits"] == true && byte_level(b) => Some("smollm"),
                [s, b] if s["type"] == "Split" && byte_level(b) => {
                    let re = s["pattern"]["Regex"].as_str()?;
                    if re.contains(r"\p{N}{1,3}") {
                        Some("llama-bpe")
                    } else if re.contains(r"|\p{N}|") || re.contains(r"|\p{N}| ") {
                        Some("qwen2")
                    } else {
                        None
                    }
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// A SentencePiece byte-fallback piece, `<0xXX>`.
fn is_byte_piece(t: &str) -> bool {
    t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') && t[3..5].bytes().all(|b| b.is_ascii_hexdigit())
}

fn read_json(path: &Path) -> Result<Option<Json>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| MergeError::io(path, e))?;
    serde_json::from_str(&text).map(Some).map_err(|e| MergeError::json(&path, e))
}

/// The `tokenizer.*` metadata of a folder's `tokenizer.json` and `tokenizer_config.json`.
pub(crate) fn tokenizer_metadata(dir: &Path, cfg: &Json, vocab_size: usize) -> Result<(Vec<(String, Value)>, String)> {
    let path = dir.join("tokenizer.json");
    let tok = read_json(&path)?
        .ok_or_else(|| MergeError::folder(dir, "no tokenizer.json; a GGUF model carries its tokenizer"))?;
    let bad = |m: String| MergeError::folder(&path, m);
    // SentencePiece BPE (`Some(space prefix)`) or byte-level BPE with a pre-tokenizer llama.cpp names.
    let sentencepiece = sentencepiece::space_prefix(&tok);
    let pre = match sentencepiece {
        Some(_) => "default",
        None if tok["model"]["type"] != "BPE" || tok["model"]["byte_fallback"] == true => {
            return Err(bad(format!(
                "the tokenizer is {} (byte_fallback {}); lora exports byte-level BPE and SentencePiece BPE tokenizers",
                tok["model"]["type"], tok["model"]["byte_fallback"]
            )));
        }
        None => pre_name(&tok["pre_tokenizer"]).ok_or_else(|| {
            bad(format!(
                "unknown pre-tokenizer {}; lora knows gpt-2, smollm, llama-bpe and qwen2",
                tok["pre_tokenizer"]
            ))
        })?,
    };
    let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
    let mut types = vec![1i32; vocab_size];
    let vocab = tok["model"]["vocab"].as_object().ok_or_else(|| bad("model.vocab is not an object".into()))?;
    let mut put = |id: usize, t: &str, ty: i32| -> Result<()> {
        let slot =
            tokens.get_mut(id).ok_or_else(|| bad(format!("token id {id} is outside vocab_size {vocab_size}")))?;
        *slot = Some(t.to_string());
        types[id] = ty;
        Ok(())
    };
    let tcfg = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
    // transformers 5 leaves the model's `unk_token` empty and names it in tokenizer_config.json.
    let unk = tok["model"]["unk_token"].as_str().or_else(|| match &tcfg["unk_token"] {
        Json::String(s) => Some(s.as_str()),
        Json::Object(o) => o.get("content").and_then(Json::as_str),
        _ => None,
    });
    for (t, id) in vocab {
        // SentencePiece marks its byte-fallback pieces and the unknown token apart.
        let ty = match sentencepiece {
            Some(_) if Some(t.as_str()) == unk => token_type::UNKNOWN,
            Some(_) if is_byte_piece(t) => token_type::BYTE,
            _ => token_type::NORMAL,
        };
        put(id.as_u64().unwrap_or(u64::MAX) as usize, t, ty)?;
    }
    for a in tok["added_tokens"].as_array().into_iter().flatten() {
        let ty = match (a["special"] == true, a["content"].as_str() == unk) {
            (_, true) => token_type::UNKNOWN,
            (true, _) => token_type::CONTROL,
            _ => token_type::USER_DEFINED,
        };
        put(a["id"].as_u64().unwrap_or(u64::MAX) as usize, a["content"].as_str().unwrap_or_default(), ty)?;
    }
    // Ids the tokenizer does not use are padding, as the converter writes them.
    let tokens: Vec<String> =
        tokens.into_iter().enumerate().map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]"))).collect();
    for (i, t) in tokens.iter().enumerate() {
        if *t == format!("[PAD{i}]") {
            types[i] = token_type::UNUSED;
        }
    }
    let merges: Vec<(String, String)> = tok["model"]["merges"]
        .as_array()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| bad("model.merges is missing or empty; a BPE tokenizer needs its merges".into()))?
        .iter()
        .enumerate()
        .map(|(i, m)| match m {
            Json::String(s) => s
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| bad(format!("model.merges[{i}] = {s:?} is not two pieces"))),
            Json::Array(p) => match p.as_slice() {
                [Json::String(a), Json::String(b)] => Ok((a.clone(), b.clone())),
                _ => Err(bad(format!("model.merges[{i}] is not a pair of strings"))),
            },
            _ => Err(bad(format!("model.merges[{i}] is neither a string nor a pair"))),
        })
        .collect::<Result<_>>()?;
    let id_of = |key: &str| -> Option<u32> {
        let content = match &tcfg[key] {
            Json::String(s) => Some(s.clone()),
            Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
            _ => None,
        }?;
        vocab.get(&content).and_then(Json::as_u64).map(|v| v as u32).or_else(|| {
            tok["added_tokens"].as_array()?.iter().find(|a| a["content"] == content.as_str())?["id"]
                .as_u64()
                .map(|v| v as u32)
        })
    };
    let first = |v: &Json| v.as_u64().or_else(|| v.as_array()?.first()?.as_u64()).map(|v| v as u32);
    let bos = first(&cfg["bos_token_id"]).or_else(|| id_of("bos_token"));
    let eos = id_of("eos_token").or_else(|| first(&cfg["eos_token_id"]));
    let pad = id_of("pad_token").or_else(|| first(&cfg["pad_token_id"]));
    // Without tokenizer_config.json's word, what the post-processor puts around a sequence.
    let single = tok["post_processor"]["single"].as_array();
    let is_special = |p: Option<&Json>| p.is_some_and(|p| p.get("SpecialToken").is_some());
    let add_bos = tcfg["add_bos_token"].as_bool().unwrap_or_else(|| is_special(single.and_then(|s| s.first())));
    let add_eos = tcfg["add_eos_token"].as_bool().unwrap_or_else(|| {
        single.is_some_and(|s| {
            s.len() > 1 && is_special(s.last()) && s.first().is_some_and(|f| f.get("Sequence").is_some())
        })
    });
    let model = if sentencepiece.is_some() { "llama" } else { "gpt2" };
    let mut kv = vec![
        ("tokenizer.ggml.model".to_string(), Value::String(model.into())),
        ("tokenizer.ggml.pre".to_string(), Value::String(pre.into())),
    ];
    // The converter's order: tokens, scores (SentencePiece), types, then merges or the space prefix.
    let scores = sentencepiece.map(|_| sentencepiece::scores_from_merges(&tokens, &types, &merges));
    kv.push(("tokenizer.ggml.tokens".to_string(), Value::Array(8, tokens.into_iter().map(Value::String).collect())));
    if let Some(scores) = scores {
        kv.push(("tokenizer.ggml.scores".to_string(), Value::Array(6, scores.into_iter().map(Value::F32).collect())));
    }
    kv.push(("tokenizer.ggml.token_type".to_string(), Value::Array(5, types.into_iter().map(Value::I32).collect())));
    match sentencepiece {
        Some(space_prefix) => kv.push(("tokenizer.ggml.add_space_prefix".to_string(), Value::Bool(space_prefix))),
        None => {
            let merges = merges.into_iter().map(|(a, b)| Value::String(format!("{a} {b}"))).collect();
            kv.push(("tokenizer.ggml.merges".to_string(), Value::Array(8, merges)));
        }
    }
    let unk_id =
        unk.and_then(|u| vocab.get(u)).and_then(Json::as_u64).map(|v| v as u32).filter(|_| sentencepiece.is_some());
    for (k, v) in
        [("bos_token_id", bos), ("eos_token_id", eos), ("unknown_token_id", unk_id), ("padding_token_id", pad)]
    {
        if let Some(v) = v {
            kv.push((format!("tokenizer.ggml.{k}"), Value::U32(v)));
        }
    }
    kv.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(add_bos)));
    kv.push(("tokenizer.ggml.add_eos_token".into(), Value::Bool(add_eos)));
    if let Some(t) = tcfg["chat_template"].as_str() {
        kv.push(("tokenizer.chat_template".into(), Value::String(t.into())));
    } else if let Ok(t) = std::fs::read_to_string(dir.join("chat_template.jinja")) {
        kv.push(("tokenizer.chat_template".into(), Value::String(t)));
    }
    Ok((kv, pre.to_string()))
}

/// llama.cpp's per-frequency divisors for Llama 3.1's rotary schedule (`rope_freqs.weight`).
fn llama3_rope_factors(cfg: &Json, rope: &Json, head_dim: usize) -> Option<Vec<f32>> {
    let kind = rope.get("rope_type").or_else(|| rope.get("type")).and_then(Json::as_str)?;
    if kind != "llama3" {
        return None;
    }
    let num = |k: &str| rope[k].as_f64();
    let theta = rope["rope_theta"].as_f64().or(cfg["rope_theta"].as_f64()).unwrap_or(10000.0);
    let (factor, low, high, old) =
        (num("factor")?, num("low_freq_factor")?, num("high_freq_factor")?, num("original_max_position_embeddings")?);
    let (low_wavelen, high_wavelen) = (old / low, old / high);
    Some(
        (0..head_dim / 2)
            .map(|i| {
                let freq = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                let f = if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    factor
                } else {
                    let smooth = (old / wavelen - low) / (high - low);
                    1.0 / ((1.0 - smooth) / factor + smooth)
                };
                f as f32
            })
            .collect(),
    )
}

/// Exports the model folder `dir` to `out` with 2-D weights as `ggml_type` (norms, biases and
/// `rope_freqs` stay F32, as the converter writes them).
pub fn export_model_gguf(dir: &Path, out: &Path, ggml_type: GgmlType, force: bool) -> Result<ModelExportReport> {
    crate::safetensors::catch_read_failures(|| export_inner(dir, out, ggml_type, force))
}

fn export_inner(dir: &Path, out: &Path, ggml_type: GgmlType, force: bool) -> Result<ModelExportReport> {
    if out.exists() && !force {
        return Err(MergeError::output_exists(&out));
    }
    let model = ModelDir::open(dir)?;
    let cfg = model.config().cloned().ok_or_else(|| MergeError::folder(dir, "no config.json"))?;
    let model_type = cfg["model_type"].as_str().unwrap_or_default();
    if crate::export_gguf_qwen35::is_qwen3_5(&cfg) {
        return crate::export_gguf_qwen35::export(dir, &model, &cfg, out, ggml_type);
    }
    let arch = gguf_architecture(model_type).ok_or_else(|| {
        MergeError::folder(
            dir,
            format!(
                "model_type '{model_type}' cannot be exported (llama, mistral, mixtral, qwen2, qwen3, qwen3_moe, \
                 qwen3_5)"
            ),
        )
    })?;
    let int =
        |k: &str| cfg[k].as_u64().ok_or_else(|| MergeError::folder(dir, format!("config.json has no integer '{k}'")));
    let (hidden, heads, layers, vocab) =
        (int("hidden_size")?, int("num_attention_heads")?, int("num_hidden_layers")?, int("vocab_size")?);
    let kv_heads = cfg["num_key_value_heads"].as_u64().unwrap_or(heads);
    let head_dim = cfg["head_dim"].as_u64().unwrap_or(hidden / heads.max(1));
    let rope = cfg
        .get("rope_parameters")
        .filter(|v| !v.is_null())
        .or_else(|| cfg.get("rope_scaling").filter(|v| !v.is_null()));
    let theta = rope.and_then(|r| r["rope_theta"].as_f64()).or(cfg["rope_theta"].as_f64()).unwrap_or(10000.0);
    let file_type = file_type(ggml_type)?;
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let key = |k: &str| format!("{arch}.{k}");
    let mut meta = vec![
        ("general.architecture".to_string(), Value::String(arch.into())),
        ("general.type".to_string(), Value::String("model".into())),
        ("general.name".to_string(), Value::String(name)),
        (key("block_count"), Value::U32(layers as u32)),
        (key("context_length"), Value::U32(cfg["max_position_embeddings"].as_u64().unwrap_or(2048) as u32)),
        (key("embedding_length"), Value::U32(hidden as u32)),
        (key("feed_forward_length"), Value::U32(int("intermediate_size")? as u32)),
        (key("attention.head_count"), Value::U32(heads as u32)),
        (key("attention.head_count_kv"), Value::U32(kv_heads as u32)),
        (key("rope.freq_base"), Value::F32(theta as f32)),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(cfg["rms_norm_eps"].as_f64().unwrap_or(1e-6) as f32)),
    ];
    if arch == "llama" {
        // The converter writes these two for llama only.
        meta.push((key("vocab_size"), Value::U32(vocab as u32)));
        meta.push((key("rope.dimension_count"), Value::U32(head_dim as u32)));
    }
    // The converter writes the head size whenever config.json names one.
    if head_dim != hidden / heads.max(1) || cfg["head_dim"].as_u64().is_some() {
        meta.push((key("attention.key_length"), Value::U32(head_dim as u32)));
        meta.push((key("attention.value_length"), Value::U32(head_dim as u32)));
    }
    if cfg.get("num_experts").or(cfg.get("num_local_experts")).is_some_and(|v| !v.is_null()) {
        meta.extend(crate::export_gguf_experts::metadata(&cfg, arch, dir)?);
    }
    meta.push(("general.file_type".into(), Value::U32(file_type)));
    meta.push(("general.quantization_version".into(), Value::U32(2)));
    let (tok, pre) = tokenizer_metadata(dir, &cfg, vocab as usize)?;
    meta.extend(tok);

    // The tensors, planned: GGUF name, HF name (none for rope_freqs), dims, type.
    let tied = cfg["tie_word_embeddings"].as_bool().unwrap_or(false);
    let mut plan: Vec<Planned> = Vec::new();
    if let Some(r) = rope {
        let kind = r.get("rope_type").or_else(|| r.get("type")).and_then(Json::as_str).unwrap_or("default");
        if !["default", "llama3"].contains(&kind) {
            return Err(MergeError::folder(dir, format!("rope type '{kind}' cannot be exported (default, llama3)")));
        }
    }
    let factors = rope.and_then(|r| llama3_rope_factors(&cfg, r, head_dim as usize));
    if rope.is_some_and(|r| r.get("rope_type").or_else(|| r.get("type")).and_then(Json::as_str) == Some("llama3"))
        && factors.is_none()
    {
        return Err(MergeError::folder(
            dir,
            "llama3 rope scaling lacks factor, low/high_freq_factor or original_max_position_embeddings",
        ));
    }
    if let Some(f) = &factors {
        plan.push(Planned {
            gguf: "rope_freqs.weight".into(),
            hf: None,
            stack: Vec::new(),
            dims: vec![f.len() as u64],
            ggml_type: GgmlType::F32,
        });
    }
    let (stacked, in_stacks) = crate::export_gguf_experts::plan(&model, ggml_type, &|n| Some(n.to_string()))?;
    for hf in model.names() {
        if hf.ends_with("rotary_emb.inv_freq") || (tied && hf == "lm_head.weight") || in_stacks.contains(hf) {
            continue;
        }
        let g = gguf_tensor_name(hf)
            .ok_or_else(|| MergeError::Mismatch(format!("{}: tensor '{hf}' has no GGUF name", dir.display())))?;
        let info = model.require(hf)?.info;
        let dims: Vec<u64> = info.shape.iter().rev().map(|&d| d as u64).collect();
        let t = tensor_type(&dims, ggml_type);
        // The converter keeps the routers in F32: their scores pick the experts.
        let t = if g.contains(".ffn_gate_inp") { GgmlType::F32 } else { t };
        plan.push(Planned { gguf: g, hf: Some(hf.to_string()), stack: Vec::new(), dims, ggml_type: t });
    }
    plan.extend(stacked);
    let values = |p: &Planned| -> Result<Vec<f32>> {
        if !p.stack.is_empty() {
            return crate::export_gguf_experts::stacked_values(&model, &p.stack, p.dims[0] as usize);
        }
        let Some(hf) = &p.hf else { return Ok(factors.clone().expect("planned")) };
        let mut values = read_f32(&model, hf)?;
        if arch == "llama" && (p.gguf.contains(".attn_q.") || p.gguf.contains(".attn_k.")) {
            let n = if p.gguf.contains(".attn_q.") { heads } else { kv_heads } as usize;
            let rows = *p.dims.last().expect("a dimension") as usize;
            let cols = if p.dims.len() == 2 { p.dims[0] as usize } else { 1 };
            values = permute_rows(&values, rows, cols, n);
        }
        Ok(values)
    };
    write_planned(out, &meta, &plan, &values)?;
    Ok(ModelExportReport { out: out.to_path_buf(), architecture: arch.into(), tensors: plan.len(), pre })
}

/// One tensor of a planned model export: its GGUF name, the Hugging Face tensor its values come
/// from (none for values the export computes or stacks), its GGUF dimensions (innermost first) and type.
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    pub gguf: String,
    pub hf: Option<String>,
    /// Routed experts stacked from several folder tensors (`export_gguf_experts`); empty otherwise.
    pub stack: Vec<Rows>,
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
}

/// The type a weight is written as: vectors stay F32 (llama.cpp's code expects norms and biases in
/// F32), and a matrix whose rows are not whole Q8_0 blocks of 32 falls back to F16, as the converter does.
pub(crate) fn tensor_type(dims: &[u64], asked: GgmlType) -> GgmlType {
    if dims.len() < 2 {
        GgmlType::F32
    } else if asked == GgmlType::Q8_0 && dims[0] % 32 != 0 {
        GgmlType::F16
    } else {
        asked
    }
}

/// `general.file_type` of an export whose weights are `t`.
pub(crate) fn file_type(t: GgmlType) -> Result<u32> {
    match t {
        GgmlType::F32 => Ok(0),
        GgmlType::F16 => Ok(1),
        GgmlType::Q8_0 => Ok(7),
        GgmlType::Bf16 => Ok(32),
        other => Err(MergeError::Parameter(format!("exporting {} models is not supported", other.name()))),
    }
}

/// The values of tensor `hf` of the folder as f32, read from the mapped file and released.
pub(crate) fn read_f32(model: &ModelDir, hf: &str) -> Result<Vec<f32>> {
    let src = Source::Mapped(model.require(hf)?);
    let mut v = vec![0f32; src.numel()];
    src.read(0, &mut v);
    src.release();
    Ok(v)
}

/// Writes `meta` and the planned tensors to `out` under a temporary name, renamed when complete:
/// the header from the shapes, then each tensor's `values` converted and written, one at a time.
pub(crate) fn write_planned(
    out: &Path,
    meta: &[(String, Value)],
    plan: &[Planned],
    values: &dyn Fn(&Planned) -> Result<Vec<f32>>,
) -> Result<()> {
    let entries: Vec<TensorPlan> = plan
        .iter()
        .map(|p| TensorPlan { name: p.gguf.clone(), dims: p.dims.clone(), ggml_type: p.ggml_type })
        .collect();
    let header_only = crate::gguf::encode_header(meta, &entries)?;
    let tmp = out.with_file_name(format!(
        ".{}.partial",
        out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    let write = || -> Result<()> {
        let f = File::create(&tmp).map_err(|e| MergeError::io(&tmp, e))?;
        let mut w = BufWriter::new(f);
        let io = |e| MergeError::io(&tmp, e);
        w.write_all(&header_only.bytes).map_err(io)?;
        let mut written = 0u64;
        for (p, offset) in plan.iter().zip(&header_only.offsets) {
            w.write_all(&vec![0u8; (offset - written) as usize]).map_err(io)?;
            let data = encode_values(&values(p)?, p.ggml_type)?;
            let planned = p.ggml_type.bytes_of(p.dims.iter().product::<u64>() as usize);
            if planned != Some(data.len()) || *offset < written {
                return Err(MergeError::Mismatch(format!(
                    "tensor '{}': {} bytes encoded, {planned:?} planned",
                    p.gguf,
                    data.len()
                )));
            }
            w.write_all(&data).map_err(io)?;
            written = offset + data.len() as u64;
        }
        let end = header_only.data_len;
        w.write_all(&vec![0u8; (end - written) as usize]).map_err(io)?;
        w.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)?;
        std::fs::rename(&tmp, out).map_err(|e| MergeError::io(out, e))
    };
    // A read failure inside a tensor surfaces as a panic caught here, so the partial file is removed too.
    if let Err(e) = crate::safetensors::catch_read_failures(write) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}
