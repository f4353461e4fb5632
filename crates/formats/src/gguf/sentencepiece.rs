//! SentencePiece BPE (Llama 1/2, Mistral, TinyLlama, Phi-3 vocabularies) in its two written forms:
//!
//! - GGUF's, `tokenizer.ggml.model = "llama"`: pieces with scores. llama.cpp (`llm_tokenizer_spm`)
//!   splits the text into characters and keeps merging the adjacent pair whose concatenation is a
//!   piece of the highest score (leftmost first); what never forms a piece falls back to `<0xXX>`.
//! - `tokenizer.json`'s: a BPE model whose merges are ranked, with byte fallback and `▁` for spaces.
//!   transformers derives it from the scores (`SentencePieceExtractor`): every split of every piece
//!   into two pieces is a merge, ranked by the piece's score.
//!
//! Both ways are here: merges from scores (reading a GGUF), scores from merges (exporting one), so
//! that llama.cpp and the `tokenizers` crate split text alike.

use std::collections::HashMap;

use serde_json::{Value as Json, json};

/// llama.cpp's token types, as `tokenizer.ggml.token_type` stores them.
pub mod token_type {
    /// An ordinary piece.
    pub const NORMAL: i32 = 1;
    /// The unknown token.
    pub const UNKNOWN: i32 = 2;
    /// A control token (BOS, EOS, chat markers).
    pub const CONTROL: i32 = 3;
    /// A user-defined token, matched whole in text.
    pub const USER_DEFINED: i32 = 4;
    /// An id no token uses.
    pub const UNUSED: i32 = 5;
    /// A byte-fallback token, `<0xXX>`.
    pub const BYTE: i32 = 6;
}

/// The ranked merges of a scored vocabulary, as transformers' `SentencePieceExtractor` derives them:
/// for each piece (in id order) its splits into two pieces, ordered by the halves' ids, then all
/// merges stably sorted by the piece's score, highest first. A string that occurs twice keeps its
/// first id, as llama.cpp's lookup does.
pub fn merges_by_score<'a>(tokens: &[&'a str], scores: &[f32]) -> Vec<[&'a str; 2]> {
    let mut ids: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        ids.entry(t).or_insert(i);
    }
    let mut merges: Vec<(f32, usize, usize)> = Vec::new();
    let mut local = Vec::new();
    for (piece_id, piece) in tokens.iter().enumerate() {
        local.clear();
        for (at, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(at);
            if let (Some(&li), Some(&ri)) = (ids.get(l), ids.get(r)) {
                local.push((li, ri));
            }
        }
        local.sort_unstable();
        merges.extend(local.iter().map(|&(l, r)| (scores[piece_id], l, r)));
    }
    // `sort_by` is stable: equal scores keep the order above.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0));
    merges.into_iter().map(|(_, l, r)| [tokens[l], tokens[r]]).collect()
}

/// Scores that make llama.cpp merge as ranked `merges` do: a piece that some merge forms scores
/// minus the rank of the first such merge among pieces (0, −1, −2, …); control, unknown,
/// user-defined and byte tokens score 0; the other pieces (single characters, which no merge forms)
/// follow below the merged ones in id order. For a vocabulary transformers converted from a
/// `tokenizer.model` these are the model's own scores, as llama.cpp's converter writes them.
pub fn scores_from_merges(tokens: &[String], types: &[i32], merges: &[(String, String)]) -> Vec<f32> {
    let ids: HashMap<&str, usize> = tokens.iter().enumerate().rev().map(|(i, t)| (t.as_str(), i)).collect();
    let mut score: Vec<Option<f32>> = vec![None; tokens.len()];
    let mut rank = 0usize;
    let mut joined = String::new();
    for (a, b) in merges {
        joined.clear();
        joined.push_str(a);
        joined.push_str(b);
        if let Some(&i) = ids.get(joined.as_str())
            && score[i].is_none()
        {
            score[i] = Some(-(rank as f32));
            rank += 1;
        }
    }
    let mut next = rank;
    (0..tokens.len())
        .map(|i| match types.get(i).copied().unwrap_or(token_type::NORMAL) {
            token_type::NORMAL | token_type::UNUSED => score[i].unwrap_or_else(|| {
                next += 1;
                -((next - 1) as f32)
            }),
            _ => 0.0,
        })
        .collect()
}

/// The `normalizer` and `decoder` of a SentencePiece `tokenizer.json` that splits as llama.cpp does:
/// spaces become `▁`, and with `space_prefix` (`tokenizer.ggml.add_space_prefix`, on unless the file
/// says otherwise) a `▁` goes before every run of text, also one that starts with a space and one
/// that follows a special token, as llama.cpp prefixes them. (transformers' `Metaspace` skips the
/// prefix in both cases, so a Hugging Face folder and llama.cpp can split those two apart.)
pub fn normalizer_and_decoder(space_prefix: bool) -> (Json, Json) {
    let replace = json!({ "type": "Replace", "pattern": { "String": " " }, "content": "▁" });
    let normalizer = if space_prefix {
        json!({ "type": "Sequence", "normalizers": [{ "type": "Prepend", "prepend": "▁" }, replace] })
    } else {
        replace
    };
    let mut decoders = vec![
        json!({ "type": "Replace", "pattern": { "String": "▁" }, "content": " " }),
        json!({ "type": "ByteFallback" }),
        json!({ "type": "Fuse" }),
    ];
    if space_prefix {
        decoders.push(json!({ "type": "Strip", "content": " ", "start": 1, "stop": 0 }));
    }
    (normalizer, json!({ "type": "Sequence", "decoders": decoders }))
}

/// Whether a `tokenizer.json` is SentencePiece BPE (a BPE model with byte fallback that writes
/// spaces as `▁`, by a `Metaspace` pre-tokenizer or a `Replace` normalizer), and if so whether it
/// puts `▁` before the text (llama.cpp's `add_space_prefix`). `None`: not this kind of tokenizer.
pub fn space_prefix(tokenizer: &Json) -> Option<bool> {
    let model = &tokenizer["model"];
    if model["type"] != "BPE" || model["byte_fallback"] != true {
        return None;
    }
    let parts = |j: &Json, key: &str| -> Vec<Json> {
        match j[key].as_array() {
            Some(list) => list.clone(),
            None if j.is_object() => vec![j.clone()],
            None => Vec::new(),
        }
    };
    let normalizers = parts(&tokenizer["normalizer"], "normalizers");
    let pre = parts(&tokenizer["pre_tokenizer"], "pretokenizers");
    let replaces_space =
        normalizers.iter().any(|n| n["type"] == "Replace" && n["pattern"]["String"] == " " && n["content"] == "▁");
    let prepends = normalizers.iter().any(|n| n["type"] == "Prepend" && n["prepend"] == "▁");
    let metaspace = pre.iter().find(|p| p["type"] == "Metaspace" && p["replacement"] == "▁");
    match metaspace {
        Some(m) => Some(match m["prepend_scheme"].as_str() {
            Some(scheme) => scheme != "never",
            None => m["add_prefix_space"].as_bool().unwrap_or(true),
        }),
        None if replaces_space => Some(prepends),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_and_merges_are_each_others_inverse() {
        // A vocabulary in SentencePiece's order: specials, bytes, merged pieces, characters.
        let tokens: Vec<String> =
            ["<unk>", "<s>", "<0x41>", "▁t", "he", "▁the", "▁th", "▁", "t", "h", "e"].map(String::from).to_vec();
        let types = [2, 3, 6, 1, 1, 1, 1, 1, 1, 1, 1];
        let given = [0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0];
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let merges = merges_by_score(&refs, &given);
        // "▁the" splits as ▁t+he and ▁th+e; ordered by the halves' ids (▁t = 3 before ▁th = 6).
        assert_eq!(merges, vec![["▁", "t"], ["h", "e"], ["▁t", "he"], ["▁th", "e"], ["▁t", "h"]]);
        let owned: Vec<(String, String)> = merges.iter().map(|[a, b]| (a.to_string(), b.to_string())).collect();
        assert_eq!(scores_from_merges(&tokens, &types, &owned), given.to_vec());
    }

    #[test]
    fn the_space_prefix_is_read_from_either_form() {
        let bpe = json!({ "type": "BPE", "byte_fallback": true });
        let legacy = json!({ "model": bpe, "normalizer": { "type": "Sequence", "normalizers": [
            { "type": "Prepend", "prepend": "▁" }, { "type": "Replace", "pattern": { "String": " " }, "content": "▁" }] } });
        assert_eq!(space_prefix(&legacy), Some(true));
        let meta = |scheme: &str| {
            json!({ "model": bpe, "normalizer": null,
            "pre_tokenizer": { "type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme, "split": false } })
        };
        assert_eq!(space_prefix(&meta("always")), Some(true));
        assert_eq!(space_prefix(&meta("never")), Some(false));
        let byte_level =
            json!({ "model": { "type": "BPE", "byte_fallback": false }, "pre_tokenizer": { "type": "ByteLevel" } });
        assert_eq!(space_prefix(&byte_level), None);
    }
}
