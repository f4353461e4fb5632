//! The MPI engine (feature `mpi`): a [`Communicator`] over `MPI_COMM_WORLD` through rsmpi, for
//! `mpirun -np N lora train recipe.toml` on CPU clusters, and on one machine over loopback.
//!
//! MPI is initialised with `MPI_THREAD_SERIALIZED`: the step calls it from a worker thread, one call
//! at a time (the communicator sits behind a mutex). Receives poll with a deadline, so that a peer
//! that never sends is an error after the timeout rather than a hang; Open MPI itself ends the job
//! when a rank dies.

use std::time::{Duration, Instant};

use mpi::Threading;
use mpi::environment::Universe;
use mpi::point_to_point::{Destination, Source};
use mpi::topology::Communicator as _;

use super::comm::{CommError, Communicator};

/// This process's rank of `MPI_COMM_WORLD`.
pub struct MpiComm {
    universe: Universe,
    rank: usize,
    world: usize,
    timeout: Duration,
}

impl std::fmt::Debug for MpiComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MpiComm(rank {} of {})", self.rank, self.world)
    }
}

impl MpiComm {
    /// Initialises MPI (once per process), waiting at most `timeout` for any message.
    pub fn init(timeout: Duration) -> Result<Self, String> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or("MPI was initialised already in this process")?;
        if threading < Threading::Serialized {
            return Err(format!("this MPI offers {threading:?} threading; lora needs Serialized"));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(Self { universe, rank, world: size, timeout })
    }
}

// SAFETY: MPI runs at MPI_THREAD_SERIALIZED and every call goes through `&mut self` behind the run's
// mutex, so calls from different threads never overlap; `Universe` only finalises MPI when dropped.
unsafe impl Send for MpiComm {}

impl Communicator for MpiComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn send(&mut self, to: usize, data: &[f32]) -> Result<(), CommError> {
        self.universe.world().process_at_rank(to as i32).send(data);
        Ok(())
    }

    fn recv(&mut self, from: usize, len: usize) -> Result<Vec<f32>, CommError> {
        let world = self.universe.world();
        let peer = world.process_at_rank(from as i32);
        let started = Instant::now();
        while peer.immediate_probe().is_none() {
            if started.elapsed() > self.timeout {
                return Err(CommError::Timeout { rank: self.rank, peer: from, seconds: self.timeout.as_secs() });
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let (got, _) = peer.receive_vec::<f32>();
        if got.len() != len {
            return Err(CommError::Mismatch { rank: self.rank, peer: from, expected: len, got: got.len() });
        }
        Ok(got)
    }
}
