//! `lora launch` and torchrun-style ranks over the TCP engine (issue 24): the ranks of the repo's
//! tiny recipe on loopback write the single process's adapter byte for byte (`exact`), stay within
//! float tolerance (`fast`), end together when one dies, and resume on another world size.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// `lora ARGS` with one thread per process: the adapter's bits are those of a thread count.
fn lora_1t(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lora")).args(args).env("RAYON_NUM_THREADS", "1").output().expect("run lora")
}

/// `lora [launch --nproc-per-node N --] train recipes/tiny.toml` into `out`, with `sets`.
fn args(nproc: Option<usize>, out: &Path, sets: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = match nproc {
        Some(n) => vec!["launch".into(), "--nproc-per-node".into(), n.to_string(), "--".into()],
        None => Vec::new(),
    };
    a.extend(["train".into(), s(&root().join("recipes/tiny.toml")).into()]);
    a.extend(["--set".into(), format!("output.dir=\"{}\"", out.display())]);
    for e in sets {
        a.extend(["--set".into(), e.to_string()]);
    }
    a
}

fn run(nproc: Option<usize>, out: &Path, sets: &[&str]) -> Output {
    let a = args(nproc, out, sets);
    let o = lora_1t(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{a:?}: {}", stderr(&o));
    o
}

fn adapter(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("adapter_model.safetensors")).unwrap()
}

#[test]
fn launched_ranks_write_the_single_process_adapter() {
    let dir = temp_dir("launch-exact");
    run(None, &dir.join("single"), &[]);
    // One rank of a named engine (gpu_check.sh's NCCL run of one GPU, here on TCP), then 2 and 3.
    for n in [1, 2, 3] {
        let out = dir.join(format!("ranks{n}"));
        let o = run(Some(n), &out, &["train.distributed=\"tcp\""][..usize::from(n == 1)]);
        assert!(adapter(&out) == adapter(&dir.join("single")), "{n} ranks wrote another adapter");
        // Rank 0 speaks for the run; the run folder is printed once.
        let err = stderr(&o);
        assert_eq!(err.matches("distributed:").count(), 1, "{err}");
        assert!(err.contains(&format!("distributed: {n} rank")) && err.contains("(tcp engine"), "{err}");
        assert_eq!(stdout(&o).lines().count(), 1, "{}", stdout(&o));
        // Each step's metrics say how long its reductions took.
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        for line in metrics.lines() {
            let m: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(m["comm_s"].as_f64().is_some_and(|c| c >= 0.0), "{line}");
        }
    }
    let single = std::fs::read_to_string(dir.join("single/metrics.jsonl")).unwrap();
    assert!(!single.contains("comm_s"), "a single process has no communication");
    // A distributed run reproduces on one process.
    let o = lora_1t(&["verify", s(&dir.join("ranks3"))]);
    assert!(o.status.success() && stdout(&o).contains("byte for byte"), "{}", stderr(&o));
    // `fast`: one all-reduce, within float tolerance of the single process.
    run(Some(2), &dir.join("fast"), &["train.grad_reduce=\"fast\""]);
    let (one, fast) = (
        f32_tensors(&dir.join("single/adapter_model.safetensors")),
        f32_tensors(&dir.join("fast/adapter_model.safetensors")),
    );
    assert_eq!(one.len(), fast.len());
    for (name, (shape, v)) in &one {
        assert_eq!(shape, &fast[name].0);
        let d = max_abs_diff(v, &fast[name].1);
        assert!(d < 1e-5, "{name}: fast differs by {d}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The pids of the processes whose command line contains `needle`, oldest first.
fn pids_with(needle: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &u32| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect();
    pids.sort();
    pids
}

#[test]
fn a_killed_rank_stops_the_run_and_it_resumes_on_another_world_size() {
    let dir = temp_dir("launch-kill");
    let long = ["train.max_steps=300", "train.save_every=25", "train.eval_every=0"];
    run(None, &dir.join("single"), &long);
    let out = dir.join("killed");
    let a = args(Some(2), &out, &long);
    let mut launcher = Command::new(env!("CARGO_BIN_EXE_lora"))
        .args(&a)
        .env("RAYON_NUM_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill rank 1 (the youngest process of the run) once a checkpoint is complete.
    let t = Instant::now();
    while lora_train::checkpoint::list(&out).unwrap_or_default().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(120), "no checkpoint within 2 minutes");
        assert!(launcher.try_wait().unwrap().is_none(), "the run ended before its first checkpoint");
        std::thread::sleep(Duration::from_millis(10));
    }
    let needle = format!("output.dir=\"{}\"", out.display());
    let pids = pids_with(&needle);
    assert_eq!(pids.len(), 3, "the launcher and two ranks: {pids:?}");
    let killed_at = Instant::now();
    assert!(Command::new("kill").args(["-KILL", &pids[2].to_string()]).status().unwrap().success());
    let o = launcher.wait_with_output().unwrap();
    let took = killed_at.elapsed();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("rank 1 (signal: 9"), "{err}");
    assert!(err.contains("rank 1 is gone"), "rank 0 names the rank it lost: {err}");
    assert!(took < Duration::from_secs(15), "the run took {took:?} to end after a rank died");
    assert!(!out.join("adapter_model.safetensors").exists());
    // Resumed on three ranks from the last complete checkpoint: the uninterrupted run's adapter.
    let mut resume = args(Some(3), &out, &long);
    resume.push("--resume".into());
    let o = lora_1t(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(adapter(&out) == adapter(&dir.join("single")), "the resumed run wrote another adapter");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn launch_refuses_what_it_cannot_run() {
    let dir = temp_dir("launch-refuse");
    let o = lora(&["launch", "--nproc-per-node", "2", "--", "verify", s(&dir)]);
    assert_user_error(&o, "lora launch runs `train`");
    let o = lora(&["launch", "--nproc-per-node", "2", "--nnodes", "2", "--", "train", "x.toml"]);
    assert_user_error(&o, "--master-addr is needed with --nnodes 2");
    // A rank whose peers never come: an error within the recipe's timeout, not a hang.
    let recipe = root().join("recipes/tiny.toml");
    let set = format!("output.dir=\"{}\"", dir.join("alone").display());
    let t = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_lora"))
        .args(["train", s(&recipe), "--set", &set, "--set", "train.distributed_timeout=2"])
        .envs([("RANK", "0"), ("WORLD_SIZE", "3"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "0")])
        .output()
        .unwrap();
    assert_user_error(&o, "ranks [1, 2] did not arrive");
    assert!(t.elapsed() < Duration::from_secs(30));
    assert!(!dir.join("alone").exists(), "nothing is written before the ranks meet");
    // `off` trains as one process whatever the environment says.
    let o = Command::new(env!("CARGO_BIN_EXE_lora"))
        .args(["train", s(&recipe), "--set", &set, "--set", "train.distributed=\"off\""])
        .envs([("RANK", "1"), ("WORLD_SIZE", "3")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // Under srun without a master address: how to give one.
    let o = Command::new(env!("CARGO_BIN_EXE_lora"))
        .args(["train", s(&recipe), "--set", &set, "--force"])
        .envs([("SLURM_PROCID", "0"), ("SLURM_STEP_NUM_TASKS", "2")])
        .env_remove("MASTER_ADDR")
        .output()
        .unwrap();
    assert_user_error(&o, "export MASTER_ADDR");
    let _ = std::fs::remove_dir_all(&dir);
}
