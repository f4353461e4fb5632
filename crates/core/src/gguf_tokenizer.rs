//! The tokenizer of a GGUF file as a `tokenizer.json` the `tokenizers` crate reads: llama.cpp stores
//! the vocabulary (`tokenizer.ggml.tokens`, `.token_type`), the BPE merges, the special ids and the
//! name of its pre-tokenizer (`tokenizer.ggml.pre`), whose regular expressions are llama.cpp's
//! (`llama-vocab.cpp`) and, equivalently, those of the Hugging Face tokenizers the names stand for.

use lora_merge::gguf::{GgufFile, Value};
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
    if model != "gpt2" {
        return Err(format!(
            "tokenizer.ggml.model = '{model}' is not supported yet (lora builds byte-level BPE, 'gpt2'); put the \
             model's tokenizer.json beside the file"
        ));
    }
    let pre_name = s("tokenizer.ggml.pre").unwrap_or("default");
    let pre = pre_tokenizer(pre_name)?;
    // Llama 3's tokenizer looks whole words up before merging (tokenizer.json `ignore_merges`), and
    // llama.cpp adds BOS for it when the file does not say.
    let llama3 = ["llama-bpe", "llama3", "smaug-bpe"].contains(&pre_name);
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
    let merges: Vec<&str> = match g.get("tokenizer.ggml.merges").and_then(Value::as_array) {
        Some(m) if !m.is_empty() => {
            m.iter().map(|v| v.as_str().ok_or("tokenizer.ggml.merges holds a non-string")).collect::<Result<_, _>>()?
        }
        _ => return Err("no tokenizer.ggml.merges (a BPE tokenizer needs them, as llama.cpp says too)".into()),
    };
    let id = |k: &str| g.get(&format!("tokenizer.ggml.{k}")).and_then(Value::as_u64).map(|v| v as u32);
    let (bos, eos, pad) = (id("bos_token_id"), id("eos_token_id"), id("padding_token_id"));
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(t.to_string(), Json::from(i));
        // 3: control, 4: user-defined (llama.cpp's token types); both are matched whole in text.
        let ty = types.get(i).copied().unwrap_or(1);
        if ty == 3 || ty == 4 {
            added.push(json!({ "id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                               "normalized": false, "special": ty == 3 }));
        }
    }
    let add_bos = g.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(llama3);
    let post = match (add_bos, bos) {
        (true, Some(b)) => {
            let b_tok = tokens.get(b as usize).ok_or_else(|| format!("bos_token_id {b} is outside the vocabulary"))?;
            json!({ "type": "TemplateProcessing",
                    "single": [{ "SpecialToken": { "id": b_tok, "type_id": 0 } }, { "Sequence": { "id": "A", "type_id": 0 } }],
                    "pair": [{ "SpecialToken": { "id": b_tok, "type_id": 0 } }, { "Sequence": { "id": "A", "type_id": 0 } },
                             { "SpecialToken": { "id": b_tok, "type_id": 0 } }, { "Sequence": { "id": "B", "type_id": 0 } }],
                    "special_tokens": { *b_tok: { "id": b_tok, "ids": [b], "tokens": [b_tok] } } })
        }
        _ => Json::Null,
    };
    let json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": post,
        "decoder": { "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true },
        "model": { "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                   "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": llama3,
                   "vocab": vocab, "merges": merges },
    });
    let template = s("tokenizer.chat_template").map(str::to_string);
    Ok((json, bos, eos, pad, template))
}
