//! Benchmark: load time, peak RSS and forward tokens/s of a random Llama-shaped model.
//!
//! Builds (once, cached in --dir) a Hugging Face folder with random weights of the requested shape,
//! written tensor by tensor so that even a 500M-parameter model never sits in memory while written;
//! then loads it and times forward passes. Run through `scripts/bench_forward.sh`.
//!
//! cargo run --release -p lora-core --example bench_forward -- --hidden 576 --layers 30 --heads 9 \
//!     --kv-heads 3 --inter 1536 --vocab 49152 --batch 1 --seq 128 --iters 5 [--backend ndarray]

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use lora_core::model::{CausalLm, TokenBatch};
use lora_core::{Backend, host::to_f32_vec};
use safetensors::tensor::{Dtype, View};

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

/// A tensor whose bytes are generated when written.
struct RandomTensor {
    shape: Vec<usize>,
    dtype: Dtype,
    seed: u64,
    /// Constant value (norm weights) instead of random.
    constant: Option<f32>,
}

impl View for RandomTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let n: usize = self.shape.iter().product();
        let mut state = self.seed;
        let mut out = Vec::with_capacity(self.data_len());
        for _ in 0..n {
            let x = match self.constant {
                Some(c) => c,
                None => {
                    // splitmix64 -> uniform in [-0.05, 0.05)
                    state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let mut z = state;
                    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                    z ^= z >> 31;
                    ((z >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
                }
            };
            match self.dtype {
                Dtype::BF16 => out.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes()),
                Dtype::F16 => out.extend_from_slice(&half::f16::from_f32(x).to_le_bytes()),
                _ => out.extend_from_slice(&x.to_le_bytes()),
            }
        }
        Cow::Owned(out)
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.bitsize() / 8
    }
}

fn write_model(o: &Opts, dir: &PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let dtype = match o.dtype.as_str() {
        "bf16" => Dtype::BF16,
        "f16" => Dtype::F16,
        _ => Dtype::F32,
    };
    let hd = o.hidden / o.heads;
    let mut t: BTreeMap<String, RandomTensor> = BTreeMap::new();
    let mut seed = 1u64;
    let mut add = |name: String, shape: Vec<usize>, constant: Option<f32>| {
        seed += 1;
        t.insert(name, RandomTensor { shape, dtype, seed, constant });
    };
    add("model.embed_tokens.weight".into(), vec![o.vocab, o.hidden], None);
    for l in 0..o.layers {
        let p = format!("model.layers.{l}");
        add(format!("{p}.input_layernorm.weight"), vec![o.hidden], Some(1.0));
        add(format!("{p}.post_attention_layernorm.weight"), vec![o.hidden], Some(1.0));
        add(format!("{p}.self_attn.q_proj.weight"), vec![o.heads * hd, o.hidden], None);
        add(format!("{p}.self_attn.k_proj.weight"), vec![o.kv_heads * hd, o.hidden], None);
        add(format!("{p}.self_attn.v_proj.weight"), vec![o.kv_heads * hd, o.hidden], None);
        add(format!("{p}.self_attn.o_proj.weight"), vec![o.hidden, o.heads * hd], None);
        add(format!("{p}.mlp.gate_proj.weight"), vec![o.inter, o.hidden], None);
        add(format!("{p}.mlp.up_proj.weight"), vec![o.inter, o.hidden], None);
        add(format!("{p}.mlp.down_proj.weight"), vec![o.hidden, o.inter], None);
    }
    add("model.norm.weight".into(), vec![o.hidden], Some(1.0));
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": o.vocab, "hidden_size": o.hidden, "intermediate_size": o.inter,
        "num_hidden_layers": o.layers, "num_attention_heads": o.heads, "num_key_value_heads": o.kv_heads,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
        "tie_word_embeddings": true, "torch_dtype": match dtype { Dtype::BF16 => "bfloat16", Dtype::F16 => "float16", _ => "float32" },
    });
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let tmp = dir.join("model.safetensors.tmp");
    safetensors::serialize_to_file(t, None, &tmp).unwrap();
    std::fs::rename(tmp, dir.join("model.safetensors")).unwrap();
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
        write_model(&o, &dir);
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
    if o.load_only {
        return;
    }
    let ids: Vec<Vec<u32>> =
        (0..o.batch).map(|b| (0..o.seq).map(|i| ((i * 7919 + b * 104729) % o.vocab) as u32).collect()).collect();
    let batch = TokenBatch { ids, mask: None };
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
