//! End-to-end training on the tiny fixture model: loss decreases, runs are byte-for-byte
//! reproducible, an interrupted and resumed run equals an uninterrupted one, verify catches changes.

use std::path::Path;
use std::sync::atomic::Ordering;

use lora_train::TrainError;
use lora_train::recipe::Recipe;
use lora_train::trainer::{Event, RunOptions, prepare, run};

use crate::common::*;

/// The repo's tiny recipe, with its output sent to `out`.
fn tiny(out: &Path, extra: &[&str]) -> Recipe {
    let mut set = vec![format!("output.dir=\"{}\"", out.display())];
    set.extend(extra.iter().map(|s| s.to_string()));
    let path = repo().join("recipes/tiny.toml");
    Recipe::load(&path, &set).unwrap()
}

fn train(recipe: &Recipe, opts: &RunOptions) -> Result<lora_train::trainer::RunSummary, TrainError> {
    run(prepare(recipe).unwrap(), opts, &mut |_| {})
}

#[test]
fn loss_decreases_and_run_folder_is_complete() {
    let d = temp_dir("complete");
    let r = tiny(&d.join("run"), &[]);
    let s = train(&r, &RunOptions::default()).unwrap();
    assert!(s.last_loss < s.first_loss - 0.2, "loss {} -> {}", s.first_loss, s.last_loss);
    assert!(s.eval_loss.unwrap() < 6.5, "validation loss {:?}", s.eval_loss);
    let run = d.join("run");
    for f in [
        "adapter_model.safetensors",
        "adapter_config.json",
        "README.md",
        "recipe.toml",
        "metrics.jsonl",
        "loss.svg",
        "manifest.json",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 12);
    assert_eq!(metrics.lines().filter(|l| l.contains("eval_loss")).count(), 2, "eval at steps 6 and 12");
    let card = std::fs::read_to_string(run.join("README.md")).unwrap();
    assert!(
        card.starts_with("---\nbase_model: ")
            && card.contains("library_name: peft")
            && card.contains("- base_model:adapter:")
    );
    assert!(std::fs::read_to_string(run.join("loss.svg")).unwrap().contains("<polyline"));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["inference_mode"], true);
    // The adapter loads back into the base and changes its output.
    let mut model =
        lora_core::CausalLm::load_dir(fixtures().join("models/llama"), &lora_core::default_device()).unwrap();
    let batch = lora_core::TokenBatch::single(vec![0, 17, 250, 33]);
    let before = lora_core::kernels::host::to_f32_vec(model.forward(&batch, None).unwrap()).unwrap();
    lora_core::adapter::load_adapter(&mut model, &run, 1.0, false).unwrap();
    let after = lora_core::kernels::host::to_f32_vec(model.forward(&batch, None).unwrap()).unwrap();
    assert_ne!(before, after);
    // The run folder is not overwritten without --force.
    assert!(matches!(train(&r, &RunOptions::default()), Err(TrainError::OutputExists(_))));
    train(&r, &RunOptions { force: true, ..Default::default() }).unwrap();
}

#[test]
fn same_recipe_gives_identical_adapter_bytes() {
    let d = temp_dir("determinism");
    // Dropout on, so that its RNG is part of what must repeat.
    let a = train(&tiny(&d.join("a"), &["lora.dropout=0.1"]), &RunOptions::default()).unwrap();
    let b = train(&tiny(&d.join("b"), &["lora.dropout=0.1"]), &RunOptions::default()).unwrap();
    let bytes = |p: &Path| std::fs::read(p.join("adapter_model.safetensors")).unwrap();
    assert!(bytes(&d.join("a")) == bytes(&d.join("b")), "adapter files differ");
    assert_eq!(a.adapter_sha256, b.adapter_sha256);
    // And the seed matters.
    let c = train(&tiny(&d.join("c"), &["lora.dropout=0.1", "train.seed=8"]), &RunOptions::default()).unwrap();
    assert_ne!(a.adapter_sha256, c.adapter_sha256);
}

#[test]
fn interrupted_and_resumed_equals_uninterrupted() {
    let d = temp_dir("resume");
    let extra = ["lora.dropout=0.1", "train.save_every=4"];
    let whole = train(&tiny(&d.join("whole"), &extra), &RunOptions::default()).unwrap();

    let r = tiny(&d.join("cut"), &extra);
    let opts = RunOptions::default();
    let flag = opts.interrupt.clone();
    let mut steps = 0;
    let err = run(prepare(&r).unwrap(), &opts, &mut |e| {
        if let Event::Step(m, _) = e {
            steps = m.step;
            if m.step == 7 {
                flag.store(true, Ordering::SeqCst); // as Ctrl-C would
            }
        }
    })
    .unwrap_err();
    assert!(matches!(err, TrainError::Interrupted { step: 7, .. }), "{err}");
    assert_eq!(steps, 7);
    assert!(!d.join("cut/adapter_model.safetensors").exists(), "no final adapter before the end");
    let resumed = train(&r, &RunOptions { resume: true, ..Default::default() }).unwrap();
    assert_eq!(resumed.adapter_sha256, whole.adapter_sha256);
    let metrics = std::fs::read_to_string(d.join("cut/metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 12, "one metrics line per step after the resume");
}

#[test]
fn verify_reproduces_and_catches_changed_data() {
    let d = temp_dir("verify");
    // A private copy of the data, so that the test can change a byte.
    let data = d.join("data.jsonl");
    std::fs::copy(repo().join("datasets/tiny-text.jsonl"), &data).unwrap();
    let r = tiny(&d.join("run"), &[&format!("data.train=\"{}\"", data.display())]);
    train(&r, &RunOptions::default()).unwrap();
    let report = lora_train::verify::verify(&d.join("run")).unwrap();
    assert!(report.inputs >= 5);
    let mut bytes = std::fs::read(&data).unwrap();
    let i = bytes.iter().position(|&b| b == b'q').unwrap();
    bytes[i] = b'Q';
    std::fs::write(&data, bytes).unwrap();
    let err = lora_train::verify::verify(&d.join("run")).unwrap_err().to_string();
    assert!(err.contains("inputs differ") && err.contains("data.jsonl"), "{err}");
}

/// `run_on_pool` keeps the pool's other workers polling while its closure runs: nested parallel
/// work (joins inside parallel loops, more levels than workers) must still all run, give the same
/// values as run serially, and return, on pools of 1, 2 and 3 workers.
#[test]
fn run_on_pool_runs_nested_parallel_work_to_the_end() {
    use rayon::prelude::*;
    let expected: u64 = (0..2000u64).map(|i| (0..i % 97).sum::<u64>()).sum();
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let got = pool.install(|| {
            lora_train::pool::run_on_pool(|| {
                (0..2000u64)
                    .into_par_iter()
                    .map(|i| {
                        let (a, b) = rayon::join(|| (0..i % 97).into_par_iter().sum::<u64>(), || 0u64);
                        a + b
                    })
                    .sum::<u64>()
            })
        });
        assert_eq!(got, expected, "{threads} threads");
    }
}

/// A panic inside `run_on_pool`'s closure reaches the caller (the polling workers stop too) instead of
/// leaving the pool waiting for them.
#[test]
fn run_on_pool_passes_a_panic_on() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let caught = pool.install(|| {
            std::panic::catch_unwind(|| lora_train::pool::run_on_pool(|| -> u32 { panic!("step failed") }))
        });
        let _ = tx.send(caught.is_err());
    });
    let panicked = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("run_on_pool hung after a panic");
    assert!(panicked, "the panic did not reach the caller");
}

/// Qwen3.5 (Hub form): LoRA on the Gated DeltaNet projections and the gated attention's, with
/// recomputation; the loss falls, the adapter carries the checkpoint's module names and shapes,
/// and it loads back onto the base and changes its output.
#[test]
fn qwen3_5_trains_adapters_on_gated_deltanet_projections() {
    let d = temp_dir("qwen3_5");
    let base = fixtures().join("models/qwen3_5-hub");
    let r = tiny(
        &d.join("run"),
        &[
            &format!("model.base=\"{}\"", base.display()),
            "lora.targets=[\"in_proj_qkv\", \"in_proj_z\", \"in_proj_b\", \"in_proj_a\", \"out_proj\", \"q_proj\", \"o_proj\"]",
            "train.gradient_checkpointing=true",
        ],
    );
    let s = train(&r, &RunOptions::default()).unwrap();
    assert!(s.last_loss < s.first_loss - 0.2, "loss {} -> {}", s.first_loss, s.last_loss);
    let run = d.join("run");
    let file = lora_formats::safetensors::SafetensorsFile::open(run.join("adapter_model.safetensors")).unwrap();
    let prefix = "base_model.model.model.language_model.layers";
    for (name, shape) in [
        ("0.linear_attn.in_proj_qkv.lora_A.weight", vec![4, 32]),
        ("0.linear_attn.in_proj_qkv.lora_B.weight", vec![104, 4]),
        ("1.linear_attn.in_proj_b.lora_B.weight", vec![6, 4]),
        ("1.linear_attn.out_proj.lora_A.weight", vec![4, 72]),
        ("2.self_attn.q_proj.lora_B.weight", vec![128, 4]),
    ] {
        let key = format!("{prefix}.{name}");
        let info = file.info(&key).unwrap_or_else(|| panic!("{key} missing"));
        assert_eq!(info.shape, shape, "{key}");
    }
    assert!(file.info(&format!("{prefix}.2.self_attn.k_proj.lora_A.weight")).is_none());
    // Reproducible byte for byte, the delta rule's state and convolution included.
    let mut again = r.clone();
    again.output.dir = d.join("again");
    train(&again, &RunOptions::default()).unwrap();
    let bytes = |p: &Path| std::fs::read(p.join("adapter_model.safetensors")).unwrap();
    assert!(bytes(&run) == bytes(&d.join("again")), "a second run gave other adapter bytes");
    let mut model = lora_core::CausalLm::load_dir(&base, &lora_core::default_device()).unwrap();
    let batch = lora_core::TokenBatch::single(vec![0, 17, 250, 33]);
    let before = lora_core::kernels::host::to_f32_vec(model.forward(&batch, None).unwrap()).unwrap();
    lora_core::adapter::load_adapter(&mut model, &run, 1.0, false).unwrap();
    let after = lora_core::kernels::host::to_f32_vec(model.forward(&batch, None).unwrap()).unwrap();
    assert_ne!(before, after);
}

/// QLoRA on a bitsandbytes 4-bit checkpoint (tests/fixtures/models/llama-bnb4, as transformers wrote
/// it) gives the adapter bytes of the same run on the f32 folder it came from with quantize = "nf4".
#[test]
fn qlora_on_a_four_bit_checkpoint_equals_quantizing_at_load() {
    let d = temp_dir("bnb4-train");
    let base = fixtures().join("models/llama-bnb4");
    let a =
        train(&tiny(&d.join("a"), &[&format!("model.base=\"{}\"", base.display())]), &RunOptions::default()).unwrap();
    let b = train(&tiny(&d.join("b"), &["model.quantize=\"nf4\""]), &RunOptions::default()).unwrap();
    assert_eq!(a.adapter_sha256, b.adapter_sha256);
    let dense = train(&tiny(&d.join("c"), &[]), &RunOptions::default()).unwrap();
    assert_ne!(a.adapter_sha256, dense.adapter_sha256, "the 4-bit base is not the dense one");
}
