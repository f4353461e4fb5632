//! `lora launch`: starts the ranks of a data-parallel `lora train` on this machine, as torchrun does,
//! for people without torchrun. Each rank is this same `lora` with torchrun's environment (`RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `GROUP_RANK`, `MASTER_ADDR`, `MASTER_PORT`).

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Start a data-parallel `lora train` on this machine: --nproc-per-node ranks (one per GPU on cuda,
/// or CPU processes), a part of --nnodes machines. Run the same command on every machine with its
/// --node-rank and rank 0's machine as --master-addr.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Ranks on this machine.
    #[arg(long)]
    nproc_per_node: usize,
    /// Machines in the run.
    #[arg(long, default_value_t = 1)]
    nnodes: usize,
    /// This machine's place among them, from 0 (rank 0 runs on machine 0).
    #[arg(long, default_value_t = 0)]
    node_rank: usize,
    /// Machine 0's address, reachable from every machine (default 127.0.0.1 on one machine).
    #[arg(long)]
    master_addr: Option<String>,
    /// A free port on machine 0 (default 29500 across machines, any free one on one machine).
    #[arg(long)]
    master_port: Option<u16>,
    /// What every rank runs, after `--`: `train recipe.toml [train options]`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Seconds the other ranks get to end on their own once one has failed (they notice its closed
/// connections at once) before they are killed.
const GRACE: Duration = Duration::from_secs(20);

/// Runs `lora launch`.
pub fn run(a: Args) -> Result<()> {
    if a.command.first().map(String::as_str) != Some("train") {
        bail!("lora launch runs `train`: lora launch --nproc-per-node N -- train recipe.toml");
    }
    if a.nproc_per_node == 0 || a.nnodes == 0 {
        bail!("--nproc-per-node and --nnodes must be at least 1");
    }
    if a.node_rank >= a.nnodes {
        bail!("--node-rank {} is not a machine of --nnodes {}", a.node_rank, a.nnodes);
    }
    let master_addr = match (&a.master_addr, a.nnodes) {
        (Some(addr), _) => addr.clone(),
        (None, 1) => "127.0.0.1".into(),
        (None, _) => bail!("--master-addr is needed with --nnodes {}: machine 0's address", a.nnodes),
    };
    let master_port = match a.master_port {
        Some(p) => p,
        None if a.nnodes == 1 => free_port()?,
        None => lora_train::distributed::launch_env::DEFAULT_PORT,
    };
    let world = a.nnodes * a.nproc_per_node;
    let exe = std::env::current_exe().context("finding the lora executable")?;
    // CPU ranks share the machine's cores: without this, every rank would start a thread per core.
    let threads = std::env::var("RAYON_NUM_THREADS").ok().unwrap_or_else(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / a.nproc_per_node).max(1).to_string()
    });
    // Ctrl-C reaches every rank from the terminal; each checkpoints at the same step and ends.
    // The launcher waits for them instead of dying first.
    let _ = ctrlc::set_handler(|| {});
    let mut children: Vec<(usize, Child)> = Vec::new();
    for local in 0..a.nproc_per_node {
        let rank = a.node_rank * a.nproc_per_node + local;
        let child = Command::new(&exe)
            .args(&a.command)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("LOCAL_WORLD_SIZE", a.nproc_per_node.to_string())
            .env("GROUP_RANK", a.node_rank.to_string())
            .env("MASTER_ADDR", &master_addr)
            .env("MASTER_PORT", master_port.to_string())
            .env("RAYON_NUM_THREADS", &threads)
            .spawn();
        match child {
            Ok(c) => children.push((rank, c)),
            Err(e) => {
                stop(&mut children);
                return Err(e).with_context(|| format!("starting rank {rank} ({})", exe.display()));
            }
        }
    }
    let mut failed = wait_all(&mut children)?;
    if failed.is_empty() {
        return Ok(());
    }
    // A rank killed by a signal is the cause; the others failed because it was gone.
    failed.sort_by_key(|(_, s)| s.code().is_some());
    let list: Vec<String> = failed.iter().map(|(r, s)| format!("rank {r} ({s})")).collect();
    bail!("the run stopped: {}", list.join(", "))
}

/// A port free on this machine now (the ranks of a one-machine run meet there).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Waits for every rank; those that failed, in the order they ended. Once one has failed the others
/// get [`GRACE`] to end by themselves, then are killed.
fn wait_all(children: &mut Vec<(usize, Child)>) -> Result<Vec<(usize, ExitStatus)>> {
    let mut failed: Vec<(usize, ExitStatus)> = Vec::new();
    let mut since: Option<Instant> = None;
    while !children.is_empty() {
        let mut i = 0;
        while i < children.len() {
            match children[i].1.try_wait().context("waiting for a rank")? {
                Some(status) => {
                    let (rank, _) = children.remove(i);
                    if !status.success() {
                        failed.push((rank, status));
                        since.get_or_insert_with(Instant::now);
                    }
                }
                None => i += 1,
            }
        }
        if since.is_some_and(|t| t.elapsed() > GRACE) {
            stop(children);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(failed)
}

/// Kills the ranks still running and reaps them.
fn stop(children: &mut Vec<(usize, Child)>) {
    for (_, c) in children.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
    children.clear();
}
