//! Writes a model folder of random weights for any architecture lora runs, from a `config.json`:
//! dense in a dtype, or with the decoder's linear layers as a bitsandbytes 4-bit NF4 checkpoint.
//! The large-shape benchmarks (scripts/bench_qwen3_5_27b.sh) use it so that a 27B model is written
//! straight in 4 bits, tensor by tensor, and never exists dense.
//!
//! cargo run --release -p lora-core --example random_model -- CONFIG.json DIR [--dtype bf16]
//!     [--four-bit] [--double-quant]
//!
//! Files beside CONFIG.json named tokenizer.json and tokenizer_config.json are copied into DIR.

use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let positional: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let dtype_at = args.iter().position(|a| a == "--dtype");
    let positional: Vec<&String> =
        positional.into_iter().filter(|a| dtype_at.is_none_or(|i| args.get(i + 1) != Some(*a))).collect();
    let [config, dir] = positional.as_slice() else {
        eprintln!("usage: random_model CONFIG.json DIR [--dtype f32|bf16|f16] [--four-bit] [--double-quant]");
        std::process::exit(2);
    };
    let dtype = dtype_at.and_then(|i| args.get(i + 1)).map_or("bf16", String::as_str);
    let four_bit = args.iter().any(|a| a == "--four-bit").then(|| args.iter().any(|a| a == "--double-quant"));
    let (config, dir) = (PathBuf::from(config), PathBuf::from(dir));
    if dir.join("config.json").exists() {
        eprintln!("{} already holds a model; remove it first", dir.display());
        std::process::exit(1);
    }
    let text = std::fs::read_to_string(&config).unwrap_or_else(|e| {
        eprintln!("{}: {e}", config.display());
        std::process::exit(1)
    });
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        eprintln!("{}: {e}", config.display());
        std::process::exit(1)
    });
    let started = std::time::Instant::now();
    if let Err(e) = lora_core::io::random_model::write_random_model(&dir, value, dtype, four_bit) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    for side in ["tokenizer.json", "tokenizer_config.json"] {
        let from = config.with_file_name(side);
        if from.is_file() {
            std::fs::copy(&from, dir.join(side)).expect("copy tokenizer file");
        }
    }
    println!("wrote {} in {:.0} s", dir.display(), started.elapsed().as_secs_f64());
}
