//! Benchmark: load time, peak RSS and forward tokens/s of a random Llama-shaped model.
//!
//! Builds (once, cached in --dir) a Hugging Face folder with random weights of the requested shape,
//! written tensor by tensor so that even a 500M-parameter model never sits in memory while written;
//! then loads it and times forward passes. Run through `scripts/bench_forward.sh`.
//!
//! cargo run --release -p lora-core --example bench_forward -- --hidden 576 --layers 30 --heads 9 \
//!     --kv-heads 3 --inter 1536 --vocab 49152 --batch 1 --seq 128 --iters 5 [--backend ndarray]

use std::path::PathBuf;
use std::time::Instant;

use lora_core::io::random_model::{LlamaShape, write_random_llama};
use lora_core::network::model::{CausalLm, TokenBatch};
use lora_core::{Backend, kernels::host::to_f32_vec};

struct Opts {
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    inter: usize,
    vocab: usize,
    batch: usize,
    seq: usize,
    iters: usize,
    dtype: String,
    backend: String,
    dir: PathBuf,
    load_only: bool,
}

fn parse() -> Opts {
    let mut o = Opts {
        hidden: 576,
        layers: 30,
        heads: 9,
        kv_heads: 3,
        inter: 1536,
        vocab: 49152,
        batch: 1,
        seq: 128,
        iters: 5,
        dtype: "f32".into(),
        backend: "cpu".into(),
        dir: std::env::temp_dir().join("lora-bench-models"),
        load_only: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = || args.get(i + 1).cloned().unwrap_or_default();
        let n = || v().parse::<usize>().unwrap_or_else(|_| panic!("{} needs a number", args[i]));
        match args[i].as_str() {
            "--hidden" => o.hidden = n(),
            "--layers" => o.layers = n(),
            "--heads" => o.heads = n(),
            "--kv-heads" => o.kv_heads = n(),
            "--inter" => o.inter = n(),
            "--vocab" => o.vocab = n(),
            "--batch" => o.batch = n(),
            "--seq" => o.seq = n(),
            "--iters" => o.iters = n(),
            "--dtype" => o.dtype = v(),
            "--backend" => o.backend = v(),
            "--dir" => o.dir = PathBuf::from(v()),
            "--load-only" => {
                o.load_only = true;
                i += 1;
                continue;
            }
            other => panic!("unknown option {other}"),
        }
        i += 2;
    }
    o
}

fn status_kb(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let o = parse();
    let name = format!(
        "llama-h{}-l{}-a{}-kv{}-i{}-v{}-{}",
        o.hidden, o.layers, o.heads, o.kv_heads, o.inter, o.vocab, o.dtype
    );
    let dir = o.dir.join(name);
    if !dir.join("model.safetensors").is_file() {
        let t = Instant::now();
        let shape = LlamaShape {
            hidden: o.hidden,
            layers: o.layers,
            heads: o.heads,
            kv_heads: o.kv_heads,
            inter: o.inter,
            vocab: o.vocab,
            tied: true,
        };
        write_random_llama(&dir, &shape, &o.dtype).unwrap();
        eprintln!("wrote {} in {:.1}s", dir.display(), t.elapsed().as_secs_f64());
    }
    let file_mb = std::fs::metadata(dir.join("model.safetensors")).unwrap().len() as f64 / 1e6;
    let backend: Backend = o.backend.parse().unwrap();
    let device = backend.device().unwrap_or_else(|e| panic!("{e}"));
    let rss0 = status_kb("VmRSS:");
    let t = Instant::now();
    let model = CausalLm::load_dir(&dir, &device).unwrap();
    let load_s = t.elapsed().as_secs_f64();
    let hwm = status_kb("VmHWM:");
    let params = model.config.num_parameters();
    println!(
        "model: {} params, file {:.0} MB ({}), model in f32 {:.0} MB",
        params,
        file_mb,
        o.dtype,
        params as f64 * 4.0 / 1e6
    );
    println!(
        "load: {:.2} s, peak RSS {:.0} MB (process before load {:.0} MB)",
        load_s,
        hwm as f64 / 1024.0,
        rss0 as f64 / 1024.0
    );
    println!(
        "after load: RSS {:.0} MB (anonymous {:.0} MB, file-backed {:.0} MB)",
        status_kb("VmRSS:") as f64 / 1024.0,
        status_kb("RssAnon:") as f64 / 1024.0,
        status_kb("RssFile:") as f64 / 1024.0
    );
    if o.load_only {
        return;
    }
    let ids: Vec<Vec<u32>> =
        (0..o.batch).map(|b| (0..o.seq).map(|i| ((i * 7919 + b * 104729) % o.vocab) as u32).collect()).collect();
    let batch = TokenBatch::rows(ids);
    // Warm-up, then timed iterations; reading one value back forces the computation to finish.
    let sync = |l: lora_core::burn::tensor::Tensor<3>| to_f32_vec(l.slice([0..1, 0..1, 0..1])).unwrap()[0];
    sync(model.forward(&batch, None).unwrap());
    let t = Instant::now();
    for _ in 0..o.iters {
        sync(model.forward(&batch, None).unwrap());
    }
    let s = t.elapsed().as_secs_f64() / o.iters as f64;
    let tokens = (o.batch * o.seq) as f64;
    println!(
        "forward [{}] batch {} x seq {}: {:.3} s/iter, {:.0} tokens/s, peak RSS {:.0} MB",
        backend,
        o.batch,
        o.seq,
        s,
        tokens / s,
        status_kb("VmHWM:") as f64 / 1024.0
    );
}
