//! Did-you-mean for unknown keys: the synonyms users bring from other tools (PEFT, axolotl,
//! transformers), else the closest key by edit distance.

/// Edit distance, for did-you-mean suggestions.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Known synonyms users reach for, mapped to our key.
const SYNONYMS: &[(&str, &str)] = &[
    ("learning_rate", "lr"),
    ("lora_alpha", "alpha"),
    ("lora_r", "r"),
    ("rank", "r"),
    ("lora_dropout", "dropout"),
    ("target_modules", "targets"),
    ("num_epochs", "epochs"),
    ("gradient_accumulation_steps", "grad_accum"),
    ("micro_batch_size", "batch_size"),
    ("sequence_len", "max_seq_len"),
    ("lr_scheduler", "schedule"),
    ("output_dir", "dir"),
    ("base_model", "base"),
    ("load_in_4bit", "quantize"),
    ("bnb_4bit_quant_type", "quantize"),
    ("bnb_4bit_use_double_quant", "double_quant"),
    ("torch_dtype", "dtype"),
    ("activation_checkpointing", "gradient_checkpointing"),
    ("use_gradient_checkpointing", "gradient_checkpointing"),
];

pub(super) fn suggest(unknown: &str, expected: &[String]) -> Option<String> {
    if let Some((_, to)) = SYNONYMS.iter().find(|(from, _)| *from == unknown)
        && expected.iter().any(|e| e == to)
    {
        return Some(to.to_string());
    }
    expected
        .iter()
        .map(|e| (levenshtein(unknown, e), e))
        .filter(|(d, e)| *d <= 2.max(e.len() / 3))
        .min()
        .map(|(_, e)| e.clone())
}
