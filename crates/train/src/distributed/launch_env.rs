//! Which rank of a data-parallel run this process is, read from the environment its launcher set:
//! torchrun's (and `lora launch`'s) `RANK` / `WORLD_SIZE` / `LOCAL_RANK` / `MASTER_ADDR` /
//! `MASTER_PORT`, Open MPI's `OMPI_COMM_WORLD_*`, MPICH's `PMI_*`, and SLURM's `srun`
//! (`SLURM_PROCID`, `SLURM_STEP_NUM_TASKS`, `SLURM_LOCALID`). `lora train recipe.toml` needs no flag
//! under any of them.

/// The launcher that started this process, by the variables it set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// torchrun, `lora launch`, or anything setting `RANK` and `WORLD_SIZE`.
    Torchrun,
    /// `mpirun` / `mpiexec` (Open MPI or MPICH), or `srun` with PMI.
    Mpi,
    /// SLURM's `srun` (without torchrun's variables).
    Slurm,
}

impl std::fmt::Display for Launcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Torchrun => "torchrun or lora launch",
            Self::Mpi => "mpirun",
            Self::Slurm => "srun",
        })
    }
}

/// This process's place in a data-parallel run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchEnv {
    /// Who started it.
    pub launcher: Launcher,
    /// This rank, from 0.
    pub rank: usize,
    /// How many ranks.
    pub world: usize,
    /// This rank among those of its machine: the GPU it takes.
    pub local_rank: usize,
    /// Where rank 0 listens (`MASTER_ADDR`, `MASTER_PORT`), when the launcher said.
    pub master: Option<(String, u16)>,
}

/// The default `MASTER_PORT`, torch's.
pub const DEFAULT_PORT: u16 = 29500;

/// The launch environment of this process; `None` when no launcher started it (a world of one is
/// one: the engine may still be asked for). An error names the variable that is malformed.
pub fn from_env() -> Result<Option<LaunchEnv>, String> {
    from_vars(|k| std::env::var(k).ok())
}

/// [`from_env`] over any variable lookup (the tests').
pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<LaunchEnv>, String> {
    let num = |k: &str| -> Result<Option<usize>, String> {
        get(k)
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.trim().parse::<usize>().map_err(|_| format!("{k}={v} is not a non-negative whole number")))
            .transpose()
    };
    // torchrun's variables first: `srun torchrun ...` and `mpirun lora launch ...` set both kinds,
    // and the inner launcher's are the ones that describe this process.
    let candidates = [
        (Launcher::Torchrun, "RANK", "WORLD_SIZE", "LOCAL_RANK"),
        (Launcher::Mpi, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
        (Launcher::Mpi, "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
        // SLURM_NTASKS is also set in a batch script that runs one process; only `srun` sets the step's.
        (Launcher::Slurm, "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID"),
    ];
    for (launcher, rank_var, world_var, local_var) in candidates {
        let (rank, world) = match (num(rank_var)?, num(world_var)?) {
            (None, None) => continue,
            (Some(r), Some(w)) => (r, w),
            // A batch script's own process has SLURM_PROCID but no step: one process.
            (Some(_), None) if launcher == Launcher::Slurm => continue,
            (Some(_), None) => return Err(format!("{rank_var} is set but {world_var} is not")),
            (None, Some(_)) => return Err(format!("{world_var} is set but {rank_var} is not")),
        };
        if world == 0 || rank >= world {
            return Err(format!("{rank_var}={rank} is not a rank of {world_var}={world}"));
        }
        let local_rank = num(local_var)?.unwrap_or(0);
        let master = match get("MASTER_ADDR").filter(|a| !a.trim().is_empty()) {
            None => None,
            Some(addr) => {
                let port = match get("MASTER_PORT").filter(|p| !p.trim().is_empty()) {
                    None => DEFAULT_PORT,
                    Some(p) => p.trim().parse::<u16>().map_err(|_| format!("MASTER_PORT={p} is not a port number"))?,
                };
                Some((addr.trim().to_string(), port))
            }
        };
        return Ok(Some(LaunchEnv { launcher, rank, world, local_rank, master }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<Option<LaunchEnv>, String> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn reads_each_launchers_variables() {
        let t = env(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "1234"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            t,
            LaunchEnv {
                launcher: Launcher::Torchrun,
                rank: 3,
                world: 4,
                local_rank: 1,
                master: Some(("node0".into(), 1234))
            }
        );
        let m =
            env(&[("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "2"), ("OMPI_COMM_WORLD_LOCAL_RANK", "1")])
                .unwrap()
                .unwrap();
        assert_eq!((m.launcher, m.rank, m.world, m.local_rank, m.master), (Launcher::Mpi, 1, 2, 1, None));
        let s =
            env(&[("SLURM_PROCID", "5"), ("SLURM_STEP_NUM_TASKS", "8"), ("SLURM_LOCALID", "1"), ("MASTER_ADDR", "n1")])
                .unwrap()
                .unwrap();
        assert_eq!((s.launcher, s.rank, s.world, s.local_rank), (Launcher::Slurm, 5, 8, 1));
        assert_eq!(s.master, Some(("n1".into(), DEFAULT_PORT)));
        // torchrun inside srun: torchrun's ranks.
        let both = env(&[("RANK", "1"), ("WORLD_SIZE", "2"), ("SLURM_PROCID", "0"), ("SLURM_STEP_NUM_TASKS", "1")])
            .unwrap()
            .unwrap();
        assert_eq!((both.launcher, both.rank, both.world), (Launcher::Torchrun, 1, 2));
    }

    #[test]
    fn a_single_process_is_not_distributed() {
        assert_eq!(env(&[]).unwrap(), None);
        assert_eq!(env(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap().map(|e| e.world), Some(1));
        // A batch script's one process: SLURM_NTASKS without srun's step.
        assert_eq!(env(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "4")]).unwrap(), None);
    }

    #[test]
    fn malformed_variables_are_named() {
        let e = env(&[("RANK", "x"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.contains("RANK=x"), "{e}");
        let e = env(&[("RANK", "2"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.contains("RANK=2") && e.contains("WORLD_SIZE=2"), "{e}");
        let e = env(&[("RANK", "0")]).unwrap_err();
        assert!(e.contains("WORLD_SIZE"), "{e}");
        let e = env(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "99999")]).unwrap_err();
        assert!(e.contains("MASTER_PORT=99999"), "{e}");
    }
}
