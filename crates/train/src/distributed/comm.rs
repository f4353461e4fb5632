//! What an engine offers the reductions: point-to-point messages, a broadcast and an all-reduce of
//! f32 buffers, each either done or an error within the engine's timeout, never a hang.

use thiserror::Error;

/// A collective that could not complete.
#[derive(Debug, Error)]
pub enum CommError {
    /// The ranks could not form the run (rendezvous, engine start-up).
    #[error("{0}")]
    Setup(String),
    /// A peer sent nothing within the timeout (it died, or never arrived).
    #[error("rank {peer} sent nothing within {seconds} s (it died or never started); rank {rank} gives up")]
    Timeout {
        /// This rank.
        rank: usize,
        /// The peer waited for.
        peer: usize,
        /// The timeout.
        seconds: u64,
    },
    /// A peer is gone (its end of the connection closed).
    #[error("rank {peer} is gone (its connection closed); rank {rank} gives up")]
    PeerGone {
        /// This rank.
        rank: usize,
        /// The peer.
        peer: usize,
    },
    /// A message of the wrong size: the ranks disagree on what they reduce.
    #[error("rank {peer} sent {got} values where rank {rank} expected {expected}: the ranks run different recipes")]
    Mismatch {
        /// This rank.
        rank: usize,
        /// The peer.
        peer: usize,
        /// Values expected.
        expected: usize,
        /// Values received.
        got: usize,
    },
}

/// A communicator of one rank among `world()`.
pub trait Communicator {
    /// This rank, from 0.
    fn rank(&self) -> usize;
    /// How many ranks.
    fn world(&self) -> usize;
    /// Sends `data` to rank `to`.
    fn send(&mut self, to: usize, data: &[f32]) -> Result<(), CommError>;
    /// Receives exactly `len` values from rank `from`.
    fn recv(&mut self, from: usize, len: usize) -> Result<Vec<f32>, CommError>;
    /// Makes `data` (of the same length everywhere) rank `root`'s on every rank.
    fn broadcast(&mut self, root: usize, data: &mut [f32]) -> Result<(), CommError> {
        if self.rank() == root {
            for to in (0..self.world()).filter(|&r| r != root) {
                self.send(to, data)?;
            }
        } else {
            let got = self.recv(root, data.len())?;
            data.copy_from_slice(&got);
        }
        Ok(())
    }
    /// Returns on every rank once every rank has called it.
    fn barrier(&mut self) -> Result<(), CommError> {
        if self.rank() == 0 {
            for r in 1..self.world() {
                self.recv(r, 0)?;
            }
            for r in 1..self.world() {
                self.send(r, &[])?;
            }
        } else {
            self.send(0, &[])?;
            self.recv(0, 0)?;
        }
        Ok(())
    }

    /// Sums `data` over the ranks, the result on every rank (the engine's order: within float
    /// tolerance of a sequential sum, identical across ranks).
    fn all_reduce_sum(&mut self, data: &mut [f32]) -> Result<(), CommError> {
        // Reduce to rank 0 in rank order, then broadcast: engines override this with their own.
        if self.rank() == 0 {
            for from in 1..self.world() {
                let got = self.recv(from, data.len())?;
                data.iter_mut().zip(got).for_each(|(a, b)| *a += b);
            }
        } else {
            self.send(0, data)?;
        }
        self.broadcast(0, data)
    }
}

/// A communicator that adds up the time its calls take (a step's communication, for its metrics):
/// every call goes to the engine's own, timed.
pub struct Timed<'a, C: Communicator + ?Sized> {
    inner: &'a mut C,
    /// Time spent in calls so far.
    pub spent: std::time::Duration,
}

impl<'a, C: Communicator + ?Sized> Timed<'a, C> {
    /// Times the calls to `inner`.
    pub fn new(inner: &'a mut C) -> Self {
        Self { inner, spent: std::time::Duration::ZERO }
    }

    fn timed<T>(&mut self, f: impl FnOnce(&mut C) -> T) -> T {
        let t = std::time::Instant::now();
        let out = f(self.inner);
        self.spent += t.elapsed();
        out
    }
}

impl<C: Communicator + ?Sized> Communicator for Timed<'_, C> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world(&self) -> usize {
        self.inner.world()
    }
    fn send(&mut self, to: usize, data: &[f32]) -> Result<(), CommError> {
        self.timed(|c| c.send(to, data))
    }
    fn recv(&mut self, from: usize, len: usize) -> Result<Vec<f32>, CommError> {
        self.timed(|c| c.recv(from, len))
    }
    fn broadcast(&mut self, root: usize, data: &mut [f32]) -> Result<(), CommError> {
        self.timed(|c| c.broadcast(root, data))
    }
    fn barrier(&mut self) -> Result<(), CommError> {
        self.timed(|c| c.barrier())
    }
    fn all_reduce_sum(&mut self, data: &mut [f32]) -> Result<(), CommError> {
        self.timed(|c| c.all_reduce_sum(data))
    }
}
