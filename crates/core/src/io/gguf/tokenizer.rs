//! The tokenizer of a GGUF file as a `tokenizer.json` the `tokenizers` crate reads: llama.cpp stores
//! the vocabulary (`tokenizer.ggml.tokens`, `.token_type`), the special ids, and either byte-level
//! BPE (`gpt2`: the merges and the name of its pre-tokenizer, `tokenizer.ggml.pre`, whose regular
//! expressions are llama.cpp's, `llama-vocab.cpp`, and equally the Hugging Face tokenizers' the names
//! stand for) or SentencePiece BPE (`llama`: pieces with scores, turned into ranked merges).

use lora_formats::gguf::{GgufFile, Value};
use serde_json::{Value as Json, json};

/// Llama 3's split (`llama-bpe`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split (`qwen2`): Llama 3's with single digits.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level(use_regex: bool) -> Json {
    json!({ "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex })
}

fn split(pattern: &str) -> Json {
    json!({ "type": "Split", "pattern": { "Regex": pattern }, "behavior": "Isolated", "invert": false })
}

/// The pre-tokenizer of a `tokenizer.ggml.pre` name.
fn pre_tokenizer(pre: &str) -> Result<Json, String> {
    Ok(match pre {
        "gpt2" | "default" | "gpt-2" => byte_level(true),
        "smollm" | "starcoder" | "refact" => {
            json!({ "type": "Sequence", "pretokenizers": [{ "type": "Digits", "individual_digits": true }, byte_level(true)] })
        }
        "llama-bpe" | "llama3" | "smaug-bpe" => {
            json!({ "type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), byte_level(false)] })
        }
        "qwen2" | "deepseek-r1-qwen" => {
            json!({ "type": "Sequence", "pretokenizers": [split(QWEN2_SPLIT), byte_level(false)] })
        }
        other => {
            return Err(format!(
                "tokenizer.ggml.pre = '{other}' is not a pre-tokenizer lora knows (gpt2, smollm, llama-bpe, qwen2); \
                 put the model's tokenizer.json beside the file"
            ));
        }
    })
}

/// `tokenizer.json`, BOS, EOS, padding ids and the chat template of a GGUF file.
#[allow(clippy::type_complexity)]
pub fn tokenizer_json(g: &GgufFile) -> Result<(Json, Option<u32>, Option<u32>, Option<u32>, Option<String>), String> {
    let s = |k: &str| g.get(k).and_then(Value::as_str);
    let model = s("tokenizer.ggml.model").ok_or("no tokenizer.ggml.model key")?;
    let tokens: Vec<&str> = g
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .ok_or("no tokenizer.ggml.tokens array")?
        .iter()
        .map(|v| v.as_str().ok_or("tokenizer.ggml.tokens holds a non-string"))
        .collect::<Result<_, _>>()?;
    let types: Vec<i64> = match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(t) => t.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    let id = |k: &str| g.get(&format!("tokenizer.ggml.{k}")).and_then(Value::as_u64).map(|v| v as u32);
    let flag = |k: &str| g.get(&format!("tokenizer.ggml.{k}")).and_then(Value::as_bool);
    let (bos, eos, pad) = (id("bos_token_id"), id("eos_token_id"), id("padding_token_id"));
    let token_of = |key: &str, id: Option<u32>| -> Result<Option<&str>, String> {
        id.map(|i| tokens.get(i as usize).copied().ok_or_else(|| format!("{key} {i} is outside the vocabulary")))
            .transpose()
    };
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        // A string twice keeps its first id, as llama.cpp's text-to-token map does.
        vocab.entry(t.to_string()).or_insert(Json::from(i));
        // llama.cpp's token types: 2 unknown, 3 control, 4 user-defined; all are matched whole in text.
        let ty = types.get(i).copied().unwrap_or(1);
        if (2..=4).contains(&ty) {
            added.push(json!({ "id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                               "normalized": false, "special": ty != 4 }));
        }
    }
    let (pre, normalizer, decoder, model_json, add_bos_default) = match model {
        "gpt2" => {
            let pre_name = s("tokenizer.ggml.pre").unwrap_or("default");
            // Llama 3's tokenizer looks whole words up before merging (tokenizer.json
            // `ignore_merges`), and llama.cpp adds BOS for it when the file does not say.
            let llama3 = ["llama-bpe", "llama3", "smaug-bpe"].contains(&pre_name);
            let merges: Vec<&str> = match g.get("tokenizer.ggml.merges").and_then(Value::as_array) {
                Some(m) if !m.is_empty() => m
                    .iter()
                    .map(|v| v.as_str().ok_or("tokenizer.ggml.merges holds a non-string"))
                    .collect::<Result<_, _>>()?,
                _ => return Err("no tokenizer.ggml.merges (a BPE tokenizer needs them, as llama.cpp says too)".into()),
            };
            let model = json!({ "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                                "ignore_merges": llama3, "vocab": vocab, "merges": merges });
            let decoder =
                json!({ "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true });
            (pre_tokenizer(pre_name)?, Json::Null, decoder, model, llama3)
        }
        "llama" => {
            let scores: Vec<f32> = g
                .get("tokenizer.ggml.scores")
                .and_then(Value::as_array)
                .ok_or("no tokenizer.ggml.scores (a SentencePiece tokenizer merges by them)")?
                .iter()
                .map(|v| v.as_f64().map(|x| x as f32).ok_or("tokenizer.ggml.scores holds a non-number"))
                .collect::<Result<_, _>>()?;
            if scores.len() != tokens.len() {
                return Err(format!("{} tokenizer.ggml.scores for {} tokens", scores.len(), tokens.len()));
            }
            let space_prefix = flag("add_space_prefix").unwrap_or(true);
            let unk = token_of("unknown_token_id", id("unknown_token_id"))?;
            let merges: Vec<[&str; 2]> = lora_formats::gguf::sentencepiece::merges_by_score(&tokens, &scores);
            let model = json!({ "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                                "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
                                "ignore_merges": false, "vocab": vocab, "merges": merges });
            let (normalizer, decoder) = lora_formats::gguf::sentencepiece::normalizer_and_decoder(space_prefix);
            (Json::Null, normalizer, decoder, model, true)
        }
        other => {
            return Err(format!(
                "tokenizer.ggml.model = '{other}' is not supported (lora reads byte-level BPE, 'gpt2', and \
                 SentencePiece BPE, 'llama'); put the model's tokenizer.json beside the file"
            ));
        }
    };
    let add_bos = flag("add_bos_token").unwrap_or(add_bos_default);
    let add_eos = flag("add_eos_token").unwrap_or(false);
    let bos_tok = token_of("bos_token_id", bos)?.filter(|_| add_bos);
    let eos_tok = token_of("eos_token_id", eos)?.filter(|_| add_eos);
    let json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre,
        "post_processor": post_processor(bos_tok.zip(bos), eos_tok.zip(eos)),
        "decoder": decoder,
        "model": model_json,
    });
    let template = s("tokenizer.chat_template").map(str::to_string);
    Ok((json, bos, eos, pad, template))
}

/// A `TemplateProcessing` that puts BOS before and EOS after each sequence (each optional).
fn post_processor(bos: Option<(&str, u32)>, eos: Option<(&str, u32)>) -> Json {
    if bos.is_none() && eos.is_none() {
        return Json::Null;
    }
    let special = |t: &str| json!({ "SpecialToken": { "id": t, "type_id": 0 } });
    let sequence = |s: &str| json!({ "Sequence": { "id": s, "type_id": 0 } });
    let wrap = |s: &str| -> Vec<Json> {
        bos.iter().map(|b| special(b.0)).chain([sequence(s)]).chain(eos.iter().map(|e| special(e.0))).collect()
    };
    let mut specials = serde_json::Map::new();
    for (t, i) in bos.into_iter().chain(eos) {
        specials.insert(t.to_string(), json!({ "id": t, "ids": [i], "tokens": [t] }));
    }
    let pair = [wrap("A"), wrap("B")].concat();
    json!({ "type": "TemplateProcessing", "single": wrap("A"), "pair": pair, "special_tokens": specials })
}
