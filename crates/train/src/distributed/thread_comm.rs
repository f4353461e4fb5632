//! An in-memory communicator between threads of one process, for tests of the reductions and of
//! the batch plan only: the engines are NCCL and MPI.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::Duration;

use super::comm::{CommError, Communicator};

/// One rank's ends of a channel to and from every other rank.
#[derive(Debug)]
pub struct ThreadComm {
    rank: usize,
    world: usize,
    /// To each rank (`None` for itself).
    to: Vec<Option<Sender<Vec<f32>>>>,
    /// From each rank (`None` for itself).
    from: Vec<Option<Receiver<Vec<f32>>>>,
    timeout: Duration,
}

impl ThreadComm {
    /// The communicators of a world of `world` ranks, each waiting at most `timeout` for a message.
    pub fn group(world: usize, timeout: Duration) -> Vec<Self> {
        let mut to: Vec<Vec<Option<Sender<Vec<f32>>>>> =
            (0..world).map(|_| (0..world).map(|_| None).collect()).collect();
        let mut from: Vec<Vec<Option<Receiver<Vec<f32>>>>> =
            (0..world).map(|_| (0..world).map(|_| None).collect()).collect();
        for a in 0..world {
            for b in (0..world).filter(|&b| b != a) {
                let (tx, rx) = channel();
                to[a][b] = Some(tx);
                from[b][a] = Some(rx);
            }
        }
        to.into_iter().zip(from).enumerate().map(|(rank, (to, from))| Self { rank, world, to, from, timeout }).collect()
    }
}

/// Runs `job` on a thread per communicator of `comms`; the results in their order (rank order for a
/// whole group).
pub fn on_ranks<T: Send + 'static>(
    comms: Vec<ThreadComm>,
    job: impl Fn(ThreadComm) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let job = std::sync::Arc::new(job);
    let handles: Vec<_> = comms
        .into_iter()
        .map(|comm| {
            let job = job.clone();
            std::thread::spawn(move || job(comm))
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("a rank panicked")).collect()
}

impl Communicator for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn send(&mut self, to: usize, data: &[f32]) -> Result<(), CommError> {
        let gone = CommError::PeerGone { rank: self.rank, peer: to };
        self.to[to].as_ref().expect("not to itself").send(data.to_vec()).map_err(|_| gone)
    }

    fn recv(&mut self, from: usize, len: usize) -> Result<Vec<f32>, CommError> {
        let rank = self.rank;
        let got = match self.from[from].as_ref().expect("not from itself").recv_timeout(self.timeout) {
            Ok(v) => v,
            Err(RecvTimeoutError::Timeout) => {
                return Err(CommError::Timeout { rank, peer: from, seconds: self.timeout.as_secs() });
            }
            Err(RecvTimeoutError::Disconnected) => return Err(CommError::PeerGone { rank, peer: from }),
        };
        if got.len() != len {
            return Err(CommError::Mismatch { rank, peer: from, expected: len, got: got.len() });
        }
        Ok(got)
    }
}
