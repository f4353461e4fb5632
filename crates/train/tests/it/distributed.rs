//! Data-parallel steps (issue 24) through the in-memory communicator between threads: the `exact`
//! reduction trains the single process's adapter byte for byte, whatever the world size (uneven
//! blocks, a rank without micro-batches included); `fast` stays within float tolerance.

use std::time::Duration;

use lora_core::adapter::load_adapter;
use lora_core::default_device;
use lora_core::kernels::host::to_f32_vec;
use lora_core::network::model::{CausalLm, TokenBatch};
use lora_train::distributed::step::{Reduce, train_step_on_rank};
use lora_train::distributed::thread_comm::{self, ThreadComm};
use lora_train::distributed::{Communicator, DistributedRun};
use lora_train::optimizer::{AdamW, AdamWConfig};
use lora_train::recipe::Recipe;
use lora_train::step::{StepOptions, train_step};
use lora_train::trainable::{adapter_tensors, set_training};
use lora_train::trainer::{Event, RunOptions, RunSummary, prepare, run};

use crate::common::*;

type Batches = Vec<(TokenBatch, Vec<Vec<Option<u32>>>)>;

/// Runs `job` on `world` thread-ranks, each with its communicator; the results in rank order.
fn on_ranks<T: Send + 'static>(world: usize, job: impl Fn(ThreadComm) -> T + Send + Sync + 'static) -> Vec<T> {
    thread_comm::on_ranks(ThreadComm::group(world, Duration::from_secs(60)), job)
}

/// `lora train`'s loop of `recipe` on one rank (exact reduction), with `opts` otherwise.
fn run_rank(
    comm: ThreadComm,
    recipe: &Recipe,
    opts: RunOptions,
    observe: &mut dyn FnMut(Event<'_>),
) -> Result<RunSummary, lora_train::TrainError> {
    let opts = RunOptions { distributed: Some(DistributedRun::new(comm, Reduce::Exact)), ..opts };
    run(prepare(recipe).unwrap(), &opts, observe)
}

/// The tiny Llama with PEFT's step-0 adapter, trainable, with dropout on (its masks come from each
/// micro-batch's global seed).
fn model() -> CausalLm {
    let mut m = CausalLm::load_dir(fixtures().join("models/llama"), &default_device()).unwrap();
    load_adapter(&mut m, &fixtures().join("lora/adapter-init"), 1.0, true).unwrap();
    for (_, lin) in m.linear_modules_mut() {
        for a in lin.lora.iter_mut() {
            a.dropout = 0.1;
        }
    }
    set_training(&mut m, true);
    m
}

/// `micro` micro-batches of 2 rows × 12 tokens, every position labelled.
fn batches(micro: usize) -> (Batches, usize) {
    let out: Batches = (0..micro)
        .map(|k| {
            let rows: Vec<Vec<u32>> =
                (0..2).map(|r| (0..12).map(|i| ((i * 31 + r * 97 + k * 13 + 5) % 384) as u32).collect()).collect();
            let labels = rows.iter().map(|row| row.iter().map(|&t| Some(t)).collect()).collect();
            (TokenBatch::rows(rows), labels)
        })
        .collect();
    (out, micro * 2 * 11)
}

const OPTIONS: StepOptions = StepOptions { max_grad_norm: 1.0, gradient_checkpointing: false };
const STEPS: usize = 3;

fn seed(i: usize) -> u64 {
    0xABCD_0000 + i as u64
}

fn adapter(m: &CausalLm) -> Vec<Vec<u32>> {
    adapter_tensors(m)
        .into_iter()
        .map(|t| to_f32_vec(t.inner()).unwrap().iter().map(|x| x.to_bits()).collect())
        .collect()
}

fn single(micro: usize) -> Vec<Vec<u32>> {
    let (b, tokens) = batches(micro);
    let mut m = model();
    let mut opt = AdamW::new(AdamWConfig::default(), &adapter_tensors(&m));
    for _ in 0..STEPS {
        train_step(&mut m, &mut opt, &b, tokens, 1e-3, OPTIONS, seed).unwrap();
    }
    adapter(&m)
}

fn ranks(world: usize, micro: usize, reduce: Reduce) -> Vec<Vec<Vec<u32>>> {
    on_ranks(world, move |mut comm| {
        let (b, tokens) = batches(micro);
        let mut m = model();
        let mut opt = AdamW::new(AdamWConfig::default(), &adapter_tensors(&m));
        for _ in 0..STEPS {
            train_step_on_rank(&mut m, &mut opt, &b, tokens, 1e-3, OPTIONS, seed, &mut comm, reduce).unwrap();
        }
        adapter(&m)
    })
}

#[test]
fn exact_reduction_trains_the_single_process_adapter_byte_for_byte() {
    for (world, micro) in [(2, 4), (3, 4), (3, 2)] {
        let want = single(micro);
        for (r, got) in ranks(world, micro, Reduce::Exact).iter().enumerate() {
            assert!(*got == want, "world {world}, {micro} micro-batches: rank {r}'s adapter differs");
        }
    }
}

#[test]
fn fast_reduction_is_replicated_and_within_tolerance() {
    let want = single(4);
    let got = ranks(3, 4, Reduce::Fast);
    assert!(got.iter().all(|g| *g == got[0]), "the ranks' adapters differ");
    let value = |bits: &Vec<Vec<u32>>| bits.iter().flatten().map(|b| f32::from_bits(*b)).collect::<Vec<_>>();
    let d = value(&got[0]).iter().zip(value(&want)).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(d <= 1e-6, "fast reduction {d:e} from the single process");
}

/// The tiny recipe (2 micro-batches a step, a checkpoint every 4 steps, validation at 6 and 12) into
/// `out`.
fn tiny(out: &std::path::Path) -> Recipe {
    let set = [format!("output.dir=\"{}\"", out.display()), "train.save_every=4".to_string()];
    let path = repo().join("recipes/tiny.toml");
    Recipe::load(&path, &set).unwrap()
}

/// Whole runs: every rank runs `lora train`'s loop, rank 0 alone writes the folder; in `exact` mode
/// the adapter file is the single process's, byte for byte, on 2 ranks and on 3 (one of them without
/// micro-batches).
#[test]
fn exact_runs_write_the_single_process_adapter() {
    let d = temp_dir("dist-run");
    let single = d.join("single");
    run(prepare(&tiny(&single)).unwrap(), &RunOptions::default(), &mut |_| {}).unwrap();
    let want = std::fs::read(single.join("adapter_model.safetensors")).unwrap();
    for world in [2, 3] {
        let out = d.join(format!("world{world}"));
        let recipe = tiny(&out);
        let summaries =
            on_ranks(world, move |comm| run_rank(comm, &recipe, RunOptions::default(), &mut |_| {}).unwrap());
        assert_eq!(std::fs::read(out.join("adapter_model.safetensors")).unwrap(), want, "world {world}");
        assert!(summaries.iter().all(|s| s.adapter_sha256 == summaries[0].adapter_sha256));
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        assert_eq!(metrics.lines().count(), 12, "rank 0 alone wrote the metrics, once per step");
        assert!(out.join("manifest.json").is_file() && !out.join("checkpoints").exists());
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(
            (manifest["world_size"].as_u64(), manifest["grad_reduce"].as_str()),
            (Some(world as u64), Some("exact"))
        );
    }
}

/// Ranks that would run different recipes (here a seed) stop before any step, with the same error.
#[test]
fn ranks_with_different_recipes_refuse_to_start() {
    let d = temp_dir("dist-differ");
    let out = d.join("run");
    let recipe = tiny(&out);
    let errors = on_ranks(2, move |comm| {
        let mut recipe = recipe.clone();
        if comm.rank() == 1 {
            recipe.train.seed = 8;
        }
        run_rank(comm, &recipe, RunOptions::default(), &mut |_| {}).unwrap_err().to_string()
    });
    for e in errors {
        assert!(e.contains("rank 1 runs another recipe or other data"), "{e}");
    }
    assert!(!out.join("metrics.jsonl").exists(), "no step was taken");
}

/// Interrupted on one rank, a 2-rank run stops on both at the same step with a checkpoint; resumed on
/// 3 ranks, it ends with the uninterrupted single process's adapter byte for byte.
#[test]
fn an_interrupted_run_resumes_on_another_world_size() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let d = temp_dir("dist-resume");
    let single = d.join("single");
    run(prepare(&tiny(&single)).unwrap(), &RunOptions::default(), &mut |_| {}).unwrap();
    let out = d.join("run");
    let recipe = tiny(&out);
    let errors = on_ranks(2, move |comm| {
        let rank = comm.rank();
        let interrupt = Arc::new(AtomicBool::new(false));
        let opts = RunOptions { interrupt: interrupt.clone(), ..RunOptions::default() };
        // Rank 1 alone is interrupted, after its fifth step.
        run_rank(comm, &recipe, opts, &mut |e| {
            if let Event::Step(m, _) = e
                && rank == 1
                && m.step == 5
            {
                interrupt.store(true, Ordering::SeqCst);
            }
        })
        .unwrap_err()
        .to_string()
    });
    for e in errors {
        assert!(e.contains("step 5") || e.contains("resume"), "{e}");
    }
    let recipe = tiny(&out);
    on_ranks(3, move |comm| {
        run_rank(comm, &recipe, RunOptions { resume: true, ..RunOptions::default() }, &mut |_| {}).unwrap();
    });
    assert_eq!(
        std::fs::read(out.join("adapter_model.safetensors")).unwrap(),
        std::fs::read(single.join("adapter_model.safetensors")).unwrap()
    );
}

/// A preference recipe on the tiny Llama and the TRL fixture's four pairs, 4 micro-batches of one
/// pair a step (dropout on), into `out`.
fn preference(dir: &std::path::Path, out: &std::path::Path, method: &str, extra: &str) -> Recipe {
    let fx = fixtures();
    let text = format!(
        "[model]\nbase = \"{}\"\n[lora]\nr = 4\nalpha = 8\ndropout = 0.1\ntargets = [\"q_proj\", \"v_proj\", \"down_proj\"]\n\
         [data]\ntrain = \"{}\"\nmax_seq_len = 64\n[train]\nmethod = \"{method}\"\nmax_steps = 3\nbatch_size = 1\n\
         grad_accum = 4\nlr = 1e-3\nschedule = \"constant\"\n[output]\ndir = \"{}\"\n{extra}",
        fx.join("models/llama").display(),
        fx.join(if method == "kto" { "dpo/kto_data.jsonl" } else { "dpo/data.jsonl" }).display(),
        out.display()
    );
    // KTO's KL estimate needs two examples a micro-batch.
    let text = if method == "kto" { text.replace("batch_size = 1", "batch_size = 2") } else { text };
    let path = dir.join(format!("{method}-{}.toml", out.file_name().unwrap().to_string_lossy()));
    std::fs::write(&path, text).unwrap();
    Recipe::load(&path, &[]).unwrap()
}

/// The metrics of a run without its timings, a line per step.
fn metrics_without_timings(run: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut m: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = m.as_object_mut().unwrap();
            o.remove("tokens_per_s");
            o.remove("comm_s");
            m
        })
        .collect()
}

/// The preference methods on 2 and 3 ranks: DPO with the reference precomputed (each rank its share)
/// and computed in the step, SimPO (no reference), and KTO (a KL estimate per micro-batch), each the
/// single process's adapter byte for byte and its metrics (loss, rewards, accuracies, KL) bit for bit.
#[test]
fn preference_methods_train_the_single_process_adapter_on_ranks() {
    let d = temp_dir("dist-dpo");
    let cases = [
        ("dpo", "[preference]\nbeta = 0.1\nsft_weight = 0.5\n"),
        ("dpo", "[preference]\nbeta = 0.1\nprecompute_reference = false\n"),
        ("simpo", "[preference]\nbeta = 2.0\ngamma = 0.3\n"),
        ("kto", "[preference]\nbeta = 0.1\nundesirable_weight = 1.5\n"),
        ("kto", "[preference]\nbeta = 0.1\nprecompute_reference = false\n"),
    ];
    for (k, (method, extra)) in cases.into_iter().enumerate() {
        let single = d.join(format!("single{k}"));
        run(prepare(&preference(&d, &single, method, extra)).unwrap(), &RunOptions::default(), &mut |_| {}).unwrap();
        let want = std::fs::read(single.join("adapter_model.safetensors")).unwrap();
        for world in [2, 3] {
            let out = d.join(format!("case{k}-world{world}"));
            let recipe = preference(&d, &out, method, extra);
            on_ranks(world, move |comm| run_rank(comm, &recipe, RunOptions::default(), &mut |_| {}).unwrap());
            let got = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
            assert!(got == want, "{method} {extra:?} on {world} ranks wrote another adapter");
            assert_eq!(metrics_without_timings(&out), metrics_without_timings(&single), "{method} on {world} ranks");
        }
    }
}
