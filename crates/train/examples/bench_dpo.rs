//! Benchmark: DPO training pairs/s and peak RSS on a random Llama, through the trainer's own DPO
//! step (lora_train::preference). Run by scripts/bench_dpo.sh beside TRL + PEFT.
//!
//! Flags: the shape as examples/bench_train (`--hidden --layers --heads --kv-heads --inter --vocab`),
//! `--pairs N` per step (default 2), `--prompt P --completion C` tokens (default 128 + 128: each
//! sequence 256), `--steps`, `--warmup`, `--r` (LoRA on q_proj and v_proj; `--targets all-linear`),
//! `--precompute` (the reference's log-probabilities once, before the timed steps),
//! `--checkpointing`.

use std::time::Instant;

use lora_core::adapter::config::TargetModules;
use lora_core::adapter::{LoraInit, LoraSpec, attach_new};
use lora_core::io::random_model::{LlamaShape, write_random_llama};
use lora_core::{Backend, BaseDtype, CausalLm, LoadOptions, Quantize};
use lora_train::optimizer::{AdamW, AdamWConfig};
use lora_train::preference::{
    Dpo, DpoLoss, PairBatch, PairIds, Reference, ReferenceLogProbs, dpo_step, reference_log_probs,
};
use lora_train::step::StepOptions;
use lora_train::trainable::{adapter_tensors, set_training};

#[global_allocator]
static ALLOCATOR: lora_core::kernels::large_blocks::KeepLargeBlocks =
    lora_core::kernels::large_blocks::KeepLargeBlocks::new();

fn flag(name: &str) -> Option<String> {
    std::env::args().collect::<Vec<_>>().windows(2).find(|w| w[0] == name).map(|w| w[1].clone())
}

fn arg(name: &str, default: usize) -> usize {
    flag(name).map_or(default, |v| v.parse().unwrap())
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn main() {
    lora_core::kernels::cpu_kernel::keep_freed_memory();
    let shape = LlamaShape {
        hidden: arg("--hidden", 576),
        layers: arg("--layers", 30),
        heads: arg("--heads", 9),
        kv_heads: arg("--kv-heads", 3),
        inter: arg("--inter", 1536),
        vocab: arg("--vocab", 49152),
        tied: true,
    };
    let (pairs_per_step, prompt, completion) = (arg("--pairs", 2), arg("--prompt", 128), arg("--completion", 128));
    let (steps, warmup, r) = (arg("--steps", 5), arg("--warmup", 1), arg("--r", 8));
    let precompute = std::env::args().any(|a| a == "--precompute");
    let checkpointing = std::env::args().any(|a| a == "--checkpointing");
    let dir = std::env::temp_dir().join(format!(
        "lora-bench-train-h{}-l{}-a{}-kv{}-i{}-v{}-f32",
        shape.hidden, shape.layers, shape.heads, shape.kv_heads, shape.inter, shape.vocab
    ));
    let dir = flag("--dir").map_or(dir, Into::into);
    if !dir.join("config.json").is_file() {
        write_random_llama(&dir, &shape, "f32").unwrap();
    }
    let device = Backend::default().device().unwrap();
    let opts = LoadOptions { dtype: BaseDtype::F32, quantize: Quantize::None };
    let mut model = CausalLm::load_dir_with(&dir, &device, &opts).unwrap();
    let spec = LoraSpec {
        r,
        alpha: 16.0,
        dropout: 0.0,
        targets: match flag("--targets").as_deref() {
            Some("all-linear") => TargetModules::Pattern("all-linear".into()),
            _ => TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]),
        },
        use_rslora: false,
        init: LoraInit::KaimingUniform,
        layers_to_transform: None,
        use_dora: false,
    };
    attach_new(&mut model, &spec, 0, true).unwrap();
    set_training(&mut model, true);
    let mut opt = AdamW::new(AdamWConfig { weight_decay: 0.0, ..AdamWConfig::default() }, &adapter_tensors(&model));
    // The token pattern of scripts/bench_dpo_trl.py: pair p's prompt, chosen and rejected.
    let vocab = model.config.vocab_size;
    let seq = |p: usize, part: usize, n: usize| -> Vec<u32> {
        (0..n).map(|i| ((i * 7919 + p * 104_729 + part * 15_485_863 + 13) % vocab) as u32).collect()
    };
    let pairs: Vec<PairIds> = (0..pairs_per_step)
        .map(|p| PairIds { prompt: seq(p, 0, prompt), chosen: seq(p, 1, completion), rejected: seq(p, 2, completion) })
        .collect();
    let batch = PairBatch::new(&pairs, 0);
    let dpo = Dpo { beta: 0.1, loss: DpoLoss::Sigmoid, label_smoothing: 0.0, gamma: 0.0, sft_weight: 0.0 };
    let options = StepOptions { max_grad_norm: 1.0, gradient_checkpointing: checkpointing };
    let reference = Reference::Base;
    let (loss, s) = lora_train::pool::run_on_pool(|| {
        let pre = precompute.then(|| vec![reference_log_probs(&mut model, &reference, &batch).unwrap()]);
        let mut step = || {
            let refs = match &pre {
                Some(p) => ReferenceLogProbs::Precomputed(p),
                None => ReferenceLogProbs::Compute(&reference),
            };
            dpo_step(&mut model, &mut opt, std::slice::from_ref(&batch), refs, &dpo, 1e-4, options, |_| 0)
                .unwrap()
                .step
                .loss
        };
        for _ in 0..warmup {
            step();
        }
        let t = Instant::now();
        let mut loss = 0.0;
        for _ in 0..steps {
            loss = step();
        }
        (loss, t.elapsed().as_secs_f64() / steps as f64)
    });
    println!(
        "lora dpo hidden {} layers {} vocab {} pairs {pairs_per_step} x ({prompt} + {completion}){}: {:.3} s/step, {:.2} pairs/s, loss {loss:.4}, peak RSS {:.0} MB",
        shape.hidden,
        shape.layers,
        shape.vocab,
        if precompute { ", precomputed reference" } else { "" },
        s,
        pairs_per_step as f64 / s,
        peak_rss_mb()
    );
}
