//! Greedy generation throughput of a model folder on the CPU: the prompt's prefill and the decoding of
//! new tokens timed apart, with the KV cache (and, for Qwen3.5, the Gated DeltaNet's recurrent state).
//! `scripts/bench_generate.sh` runs it beside transformers' `generate` on the same folder.
//!
//!   cargo run --release -p lora-core --example bench_generate -- --dir MODEL [--prompt 64] [--new 64]
//!
//! The prompt is a fixed pattern of ids below 256; generation never stops early (no stop ids).

use std::time::Instant;

use lora_core::network::model::TokenBatch;
use lora_core::{CausalLm, GenerateOptions, SamplingParams, default_device, generate};

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let dir: String = arg("--dir", String::new());
    assert!(!dir.is_empty(), "--dir MODEL is required");
    let (prompt_len, new): (usize, usize) = (arg("--prompt", 64), arg("--new", 64));
    let device = default_device();
    let model = CausalLm::load_dir(&dir, &device).unwrap_or_else(|e| panic!("loading {dir}: {e}"));
    let prompt: Vec<u32> = (0..prompt_len as u32).map(|i| (i * 37 + 11) % 251).collect();
    // The prefill alone: one forward pass over the prompt.
    let t = Instant::now();
    let _ = lora_core::to_f32_vec(model.forward(&TokenBatch::rows(vec![prompt.clone()]), None).unwrap()).unwrap();
    let prefill = t.elapsed().as_secs_f64();
    let opts = GenerateOptions {
        max_new_tokens: new,
        sampling: SamplingParams::default(),
        stop_ids: Vec::new(),
        use_cache: true,
    };
    let t = Instant::now();
    let out = generate(&model, &prompt, &opts, |_| Ok(())).unwrap();
    let total = t.elapsed().as_secs_f64();
    let made = out.len(); // the new tokens
    let decode = (total - prefill).max(1e-9);
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    println!(
        "lora [{threads} threads] {} prompt {prompt_len} new {made}: prefill {prefill:.3} s ({:.1} tokens/s), \
         decode {:.1} tokens/s, total {total:.2} s",
        model.config.architecture.model_type(),
        prompt_len as f64 / prefill,
        made as f64 / decode
    );
}
