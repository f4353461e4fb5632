//! Starting this process's rank of a data-parallel run: the launcher's environment
//! ([`launch_env`](super::launch_env)) says which rank, the recipe's `[train] distributed` (or
//! autodetection) which engine.
//!
//! `auto`: MPI when an MPI launcher started a build with the `mpi` feature; NCCL when the device is
//! `cuda`; TCP otherwise (and for `mpirun` without the feature, when `MASTER_ADDR` says where rank 0
//! listens).

use std::time::Duration;

use super::DistributedRun;
use super::comm::CommError;
use super::launch_env::{LaunchEnv, Launcher};
use super::step::Reduce;
use super::tcp_comm::TcpComm;

/// The engines, by their recipe names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// Sockets between the ranks (CPU machines without MPI).
    Tcp,
    /// NVIDIA's NCCL, one process per GPU (feature `cuda`).
    Nccl,
    /// MPI's `MPI_COMM_WORLD` (feature `mpi`).
    Mpi,
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Nccl => "nccl",
            Self::Mpi => "mpi",
        })
    }
}

/// The values of `[train] distributed`.
pub const SETTINGS: [&str; 5] = ["auto", "off", "tcp", "nccl", "mpi"];

/// A started rank: its part in the run, the engine, and the GPU it takes (its local rank).
#[derive(Debug)]
pub struct Started {
    /// The communicator and reduction.
    pub run: DistributedRun,
    /// The engine that carries it.
    pub engine: Engine,
    /// The launcher that started the process.
    pub launcher: Launcher,
    /// The GPU this rank trains on (its rank among its machine's).
    pub gpu: usize,
}

fn setup(m: impl Into<String>) -> CommError {
    CommError::Setup(m.into())
}

/// The engine `setting` picks for `env` on `device`.
pub fn choose(setting: &str, env: &LaunchEnv, device: &str) -> Engine {
    match setting {
        "tcp" => Engine::Tcp,
        "nccl" => Engine::Nccl,
        "mpi" => Engine::Mpi,
        _ if env.launcher == Launcher::Mpi && cfg!(feature = "mpi") => Engine::Mpi,
        _ if device == "cuda" => Engine::Nccl,
        _ => Engine::Tcp,
    }
}

/// Where rank 0 listens, or an error saying how to tell this launcher.
fn master(env: &LaunchEnv) -> Result<(&str, u16), CommError> {
    match (&env.master, env.launcher) {
        (Some((host, port)), _) => Ok((host, *port)),
        (None, Launcher::Mpi) => Err(setup(format!(
            "started by mpirun with {} ranks, but this lora was built without the `mpi` feature: build it with \
             `cargo build --release -p lora-cli --features mpi` (Open MPI's libopenmpi-dev and libclang installed), \
             or export MASTER_ADDR and MASTER_PORT (rank 0's host and a free port) for the TCP engine",
            env.world
        ))),
        (None, Launcher::Slurm) => Err(setup(
            "started by srun: export MASTER_ADDR and MASTER_PORT in the batch script, e.g. \
             `export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1) MASTER_PORT=29500`",
        )),
        (None, Launcher::Torchrun) => {
            Err(setup("RANK and WORLD_SIZE are set but MASTER_ADDR is not: where does rank 0 listen?"))
        }
    }
}

/// Starts this process's rank when a launcher started several, or one with an engine named (`None`:
/// a single process, or `setting` is `"off"`). `device` is the recipe's `[train] device`.
pub fn start(setting: &str, device: &str, reduce: Reduce, timeout: Duration) -> Result<Option<Started>, CommError> {
    if setting == "off" {
        return Ok(None);
    }
    let Some(env) = super::launch_env::from_env().map_err(setup)? else {
        return Ok(None);
    };
    // A launcher's single rank trains as one process, unless the recipe names an engine (a check
    // of the engine on one GPU).
    if env.world == 1 && setting == "auto" {
        return Ok(None);
    }
    let engine = choose(setting, &env, device);
    let (launcher, gpu) = (env.launcher, env.local_rank);
    let run = match engine {
        Engine::Tcp => DistributedRun::new(TcpComm::join(env.rank, env.world, master(&env)?, None, timeout)?, reduce),
        Engine::Nccl => {
            if device != "cuda" {
                return Err(setup(format!(
                    "[train] distributed = \"nccl\" needs device = \"cuda\" (the recipe's is \"{device}\")"
                )));
            }
            nccl(&env, timeout, reduce)?
        }
        Engine::Mpi => mpi(&env, timeout, reduce)?,
    };
    Ok(Some(Started { run, engine, launcher, gpu }))
}

#[cfg(feature = "cuda")]
fn nccl(env: &LaunchEnv, timeout: Duration, reduce: Reduce) -> Result<DistributedRun, CommError> {
    let master = env.master.as_ref().map(|(host, port)| (host.as_str(), *port));
    let comm = super::nccl_comm::NcclComm::start(env.rank, env.world, env.local_rank, master, timeout)?;
    Ok(DistributedRun::new(comm, reduce))
}

#[cfg(not(feature = "cuda"))]
fn nccl(_: &LaunchEnv, _: Duration, _: Reduce) -> Result<DistributedRun, CommError> {
    Err(setup("the NCCL engine needs the cuda build (`cargo build --release -p lora-cli --features cuda`)"))
}

#[cfg(feature = "mpi")]
fn mpi(env: &LaunchEnv, timeout: Duration, reduce: Reduce) -> Result<DistributedRun, CommError> {
    use super::comm::Communicator as _;
    let comm = super::mpi_comm::MpiComm::init(timeout).map_err(setup)?;
    if comm.world() != env.world {
        return Err(setup(format!(
            "MPI's world has {} ranks but the launcher said {} ({}); [train] distributed = \"mpi\" needs mpirun",
            comm.world(),
            env.world,
            env.launcher
        )));
    }
    Ok(DistributedRun::new(comm, reduce))
}

#[cfg(not(feature = "mpi"))]
fn mpi(_: &LaunchEnv, _: Duration, _: Reduce) -> Result<DistributedRun, CommError> {
    Err(setup(
        "[train] distributed = \"mpi\" needs a lora built with the `mpi` feature (`cargo build --release -p lora-cli \
         --features mpi`, Open MPI's libopenmpi-dev and libclang installed)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(launcher: Launcher) -> LaunchEnv {
        LaunchEnv { launcher, rank: 0, world: 2, local_rank: 0, master: None }
    }

    #[test]
    fn auto_picks_nccl_on_cuda_and_tcp_on_the_cpu() {
        assert_eq!(choose("auto", &env(Launcher::Torchrun), "cuda"), Engine::Nccl);
        assert_eq!(choose("auto", &env(Launcher::Torchrun), "cpu"), Engine::Tcp);
        assert_eq!(choose("auto", &env(Launcher::Slurm), "wgpu"), Engine::Tcp);
        let under_mpi = choose("auto", &env(Launcher::Mpi), "cpu");
        assert_eq!(under_mpi, if cfg!(feature = "mpi") { Engine::Mpi } else { Engine::Tcp });
        assert_eq!(choose("tcp", &env(Launcher::Mpi), "cuda"), Engine::Tcp);
    }

    #[test]
    fn a_missing_master_says_how_to_give_it() {
        let e = master(&env(Launcher::Slurm)).unwrap_err().to_string();
        assert!(e.contains("export MASTER_ADDR"), "{e}");
        let e = master(&env(Launcher::Mpi)).unwrap_err().to_string();
        assert!(e.contains("--features mpi") && e.contains("MASTER_ADDR"), "{e}");
        let given = LaunchEnv { master: Some(("h".into(), 7)), ..env(Launcher::Torchrun) };
        assert_eq!(master(&given).unwrap(), ("h", 7));
    }
}
