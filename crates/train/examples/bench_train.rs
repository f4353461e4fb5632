//! Benchmark: LoRA training tokens/s and peak RSS on a random Llama, through the trainer's own step
//! (forward, backward, token-normalised accumulation, clipping, AdamW). Run by scripts/bench_train.sh.
//!
//! Defaults are the reference shape: hidden 256, 4 layers, 4 heads / 4 KV heads, intermediate 688,
//! vocab 1000, seq 128, batch 4, r = 8 on q_proj and v_proj, f32. `--dir DIR` runs on an existing
//! folder of any architecture instead (scripts/bench_qwen3_5.sh: a random Qwen3.5), and
//! `--targets all-linear` (or a comma list) picks the adapted modules; `--dora` makes them DoRA.

use std::time::Instant;

use lora_core::adapter::config::TargetModules;
use lora_core::adapter::{LoraInit, LoraSpec, attach_new};
use lora_core::io::random_model::{LlamaShape, write_random_llama};
use lora_core::{Backend, CausalLm, TokenBatch};
use lora_core::{BaseDtype, LoadOptions, Quantize};
use lora_train::optimizer::{AdamW, AdamWConfig};
use lora_train::step::{StepOptions, train_step};
use lora_train::trainable::{adapter_tensors, set_training};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn status_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// The fp32 GEMM rate of burn-flex's matmul on this machine: a 2048³ product, 2 s.
fn measure_peak() {
    let device = lora_core::default_device();
    let n: usize = 2048;
    let x =
        lora_core::burn::tensor::Tensor::<2>::random([n, n], lora_core::burn::tensor::Distribution::Default, &device);
    let run = || lora_core::kernels::host::to_f32_vec(x.clone().matmul(x.clone()).slice([0..1, 0..1])).unwrap()[0];
    for _ in 0..3 {
        run();
    }
    let (t, mut k) = (Instant::now(), 0);
    while t.elapsed().as_secs_f64() < 2.0 {
        run();
        k += 1;
    }
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    println!(
        "lora sgemm 2048^3 (burn-flex, gemm), {threads} threads: {:.1} GFLOP/s",
        2.0 * (n * n * n) as f64 * k as f64 / t.elapsed().as_secs_f64() / 1e9
    );
}

/// As `lora`'s: the system allocator, plus a few large freed blocks kept for reuse while training.
#[global_allocator]
static ALLOCATOR: lora_core::kernels::large_blocks::KeepLargeBlocks =
    lora_core::kernels::large_blocks::KeepLargeBlocks::new();

fn main() {
    if std::env::var("LORA_SYSTEM_ALLOCATOR").as_deref() != Ok("1") {
        lora_core::kernels::cpu_kernel::keep_freed_memory();
    }
    if std::env::args().any(|a| a == "--measure-peak") {
        return measure_peak();
    }
    let shape = LlamaShape {
        hidden: arg("--hidden", 256),
        layers: arg("--layers", 4),
        heads: arg("--heads", 4),
        kv_heads: arg("--kv-heads", 4),
        inter: arg("--inter", 688),
        vocab: arg("--vocab", 1000),
        tied: !std::env::args().any(|a| a == "--untied"),
    };
    let (batch, seq, steps, r) = (arg("--batch", 4), arg("--seq", 128), arg("--steps", 10), arg("--r", 8));
    let checkpointing = std::env::args().any(|a| a == "--checkpointing");
    let opts = LoadOptions {
        dtype: flag("--dtype").map_or(BaseDtype::F32, |d| d.parse().unwrap()),
        quantize: Quantize::parse(&flag("--quantize").unwrap_or("none".into()), false).unwrap(),
    };
    let file_dtype = flag("--file-dtype").unwrap_or("f32".into());
    let warmup = arg("--warmup", 2);
    let backend: Backend = std::env::args()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[0] == "--backend")
        .map(|w| w[1].parse().unwrap())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!(
        "lora-bench-train-h{}-l{}-a{}-kv{}-i{}-v{}{}-{file_dtype}",
        shape.hidden,
        shape.layers,
        shape.heads,
        shape.kv_heads,
        shape.inter,
        shape.vocab,
        if shape.tied { "" } else { "-untied" }
    ));
    let dir = flag("--dir").map_or(dir, Into::into);
    if !dir.join("config.json").is_file() {
        write_random_llama(&dir, &shape, &file_dtype).unwrap();
    }
    let device = backend.device().unwrap();
    let loaded = Instant::now();
    let mut model = CausalLm::load_dir_with(&dir, &device, &opts).unwrap();
    let load_s = loaded.elapsed().as_secs_f64();
    let load_rss = status_kb("VmHWM:") as f64 / 1024.0;
    let base_mb = model.base_bytes() as f64 / 1e6;
    let spec = LoraSpec {
        r,
        alpha: 16.0,
        dropout: 0.0,
        // `--targets all-linear` or a comma list of module names (default q_proj,v_proj).
        targets: match flag("--targets").as_deref() {
            Some("all-linear") => TargetModules::Pattern("all-linear".into()),
            Some(list) => TargetModules::Names(list.split(',').map(String::from).collect()),
            None => TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]),
        },
        use_rslora: false,
        init: LoraInit::KaimingUniform,
        layers_to_transform: None,
        use_dora: std::env::args().any(|a| a == "--dora"),
    };
    attach_new(&mut model, &spec, 0, true).unwrap();
    set_training(&mut model, true);
    let mut opt = AdamW::new(AdamWConfig::default(), &adapter_tensors(&model));
    let vocab = model.config.vocab_size;
    let ids: Vec<Vec<u32>> =
        (0..batch).map(|b| (0..seq).map(|i| ((i * 7919 + b * 104_729 + 13) % vocab) as u32).collect()).collect();
    let labels: Vec<Vec<Option<u32>>> = ids.iter().map(|r| r.iter().map(|&i| Some(i)).collect()).collect();
    let batches = vec![(TokenBatch::rows(ids), labels)];
    let tokens = batch * (seq - 1);
    let options = StepOptions { max_grad_norm: 1.0, gradient_checkpointing: checkpointing };
    let mut step = |_: usize| train_step(&mut model, &mut opt, &batches, tokens, 1e-4, options, |_| 0).unwrap().loss;
    // The steps run on a worker of the pool, as `lora train` runs them (lora_train::pool::run_on_pool).
    let (loss, s) = lora_train::pool::run_on_pool(|| {
        for i in 0..warmup {
            step(i); // warm-up
        }
        let t = Instant::now();
        let mut loss = 0.0;
        for i in 0..steps {
            loss = step(i);
        }
        (loss, t.elapsed().as_secs_f64() / steps as f64)
    });
    // The FLOP count is the Llama's with q_proj,v_proj adapters: given only for that case.
    let llama_count = !model.config.is_hybrid() && flag("--targets").is_none();
    let tflops = model_flops_per_token(&shape, seq, r) * (batch * seq) as f64 / s / 1e12;
    let mfu = flag("--peak-tflops")
        .and_then(|p| p.parse::<f64>().ok())
        .filter(|_| llama_count)
        .map_or(String::new(), |peak| format!(", MFU {:.1}% of {peak} TFLOP/s", 100.0 * tflops / peak));
    let tflops = if llama_count { format!(", {tflops:.3} model TFLOP/s") } else { String::new() };
    println!(
        "lora [{backend}] {}{} base {} {}{} hidden {} layers {} batch {batch} seq {seq} r {r}: {:.3} s/step, {:.1} tokens/s{tflops}{mfu}, loss {loss:.4}, peak RSS {:.0} MB; base {base_mb:.0} MB, load {load_s:.1} s (peak {load_rss:.0} MB)",
        model.config.architecture.model_type(),
        if spec.use_dora { " DoRA" } else { "" },
        opts.dtype,
        opts.quantize,
        if checkpointing { " +recompute" } else { "" },
        model.config.hidden_size,
        model.config.num_hidden_layers,
        s,
        (batch * seq) as f64 / s,
        status_kb("VmHWM:") as f64 / 1024.0
    );
}

/// Model FLOPs of one trained token, the work a LoRA step needs (recomputation not counted):
/// the frozen matmuls forward and their input gradients (2 + 2 per weight), the adapters forward,
/// input and weight gradients (2 + 2 + 2 per weight), and attention's QKᵀ and AV, forward (4·T·h
/// per layer) and backward (twice that), over the full T×T square as PaLM's MFU counts it.
fn model_flops_per_token(shape: &LlamaShape, seq: usize, r: usize) -> f64 {
    let (h, l) = (shape.hidden as f64, shape.layers as f64);
    let kv = h / shape.heads as f64 * shape.kv_heads as f64;
    let per_layer = h * (2.0 * h + 2.0 * kv) + 3.0 * h * shape.inter as f64;
    let frozen = l * per_layer + shape.vocab as f64 * h;
    let lora = l * r as f64 * ((h + h) + (h + kv)); // q_proj and v_proj
    4.0 * frozen + 6.0 * lora + 12.0 * l * h * seq as f64
}
