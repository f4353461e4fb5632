//! Data-parallel training's pieces that do not depend on an engine (issue 24): which micro-batches
//! a rank takes ([`plan`]), what an engine must offer ([`comm::Communicator`]), and the two
//! reductions of the adapter gradients ([`reduce`]): `exact`, a chain in rank order that adds the
//! micro-batches' gradient contributions in exactly the order one process adds them, so that the
//! adapter is the single-process one byte for byte; and `fast`, one all-reduce.
//!
//! The engines: NCCL for GPUs ([`nccl_comm`], feature `cuda`), MPI for CPU clusters ([`mpi_comm`],
//! feature `mpi`), and TCP sockets for CPU machines without MPI ([`tcp_comm`]); [`engine`] starts the
//! one the recipe and the launcher's environment ([`launch_env`]) pick. [`thread_comm`] is an
//! in-memory communicator between threads, for tests only, never offered as an engine.

pub mod agree;
pub mod comm;
pub mod engine;
pub mod launch_env;
#[cfg(feature = "mpi")]
pub mod mpi_comm;
#[cfg(feature = "cuda")]
pub mod nccl_comm;
pub mod plan;
pub mod preference;
pub mod reduce;
pub mod step;
pub mod tcp_comm;
pub mod thread_comm;

pub use comm::{CommError, Communicator};
pub use step::Reduce;

use std::sync::{Arc, Mutex};

/// A rank's part in a distributed run ([`crate::trainer::RunOptions::distributed`]): its
/// communicator and the reduction. Rank 0 alone writes the run folder; the others wait for it.
#[derive(Clone)]
pub struct DistributedRun {
    /// This rank.
    pub rank: usize,
    /// How many ranks.
    pub world: usize,
    /// The engine.
    pub comm: Arc<Mutex<dyn Communicator + Send>>,
    /// `exact` or `fast`.
    pub reduce: Reduce,
}

impl std::fmt::Debug for DistributedRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DistributedRun(rank {} of {}, {:?})", self.rank, self.world, self.reduce)
    }
}

impl DistributedRun {
    /// Rank `comm.rank()` of a run reducing as `reduce`.
    pub fn new(comm: impl Communicator + Send + 'static, reduce: Reduce) -> Self {
        let (rank, world) = (comm.rank(), comm.world());
        Self { rank, world, comm: Arc::new(Mutex::new(comm)), reduce }
    }

    /// Waits for every rank.
    pub fn barrier(&self) -> Result<(), CommError> {
        self.with(|c| c.barrier())
    }

    /// Runs `f` with this rank's communicator.
    pub fn with<T>(&self, f: impl FnOnce(&mut dyn Communicator) -> T) -> T {
        f(&mut *self.comm.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// [`Self::with`], also returning the seconds `f` spent in the communicator (a step's
    /// communication, for its metrics).
    pub fn timed<T>(&self, f: impl FnOnce(&mut dyn Communicator) -> T) -> (T, f64) {
        self.with(|comm| {
            let mut timed = comm::Timed::new(comm);
            let out = f(&mut timed);
            (out, timed.spent.as_secs_f64())
        })
    }
}
