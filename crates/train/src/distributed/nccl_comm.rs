//! The NCCL engine (feature `cuda`): a [`Communicator`] over NCCL through `cudarc::nccl`, one
//! process per GPU (the torchrun model). lora writes only the bootstrap: rank 0 creates NCCL's
//! unique id and hands its 128 bytes to the others over the TCP rendezvous at
//! `MASTER_ADDR:MASTER_PORT` ([`TcpComm`]), or every rank derives it from `NCCL_COMM_ID`; the
//! collectives are NCCL's. `libnccl.so.2` is loaded at run time: a machine without it gets an error
//! saying so, and the default build needs no NCCL at all.
//!
//! The reductions hand host buffers (the adapter gradients, a few MB); each call copies them to the
//! rank's GPU, runs the NCCL operation on a stream of its own and copies the result back. The wait
//! polls an event against the run's timeout, so a peer that died or never calls is an error, not a
//! hang (dropping the communicator then aborts it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use cudarc::nccl::{Comm, Id, ReduceOp};

use super::comm::{CommError, Communicator};
use super::tcp_comm::TcpComm;

/// This process's rank of an NCCL communicator.
pub struct NcclComm {
    comm: Comm,
    stream: Arc<CudaStream>,
    rank: usize,
    world: usize,
    timeout: Duration,
    /// The rendezvous' connections, kept so that the TCP peers see this rank alive until it ends.
    _rendezvous: Option<TcpComm>,
}

impl std::fmt::Debug for NcclComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NcclComm(rank {} of {})", self.rank, self.world)
    }
}

// SAFETY: the communicator is used through `&mut self` behind the run's mutex, one call at a time;
// NCCL communicators may be used from any thread as long as calls do not overlap.
unsafe impl Send for NcclComm {}

fn setup(m: impl Into<String>) -> CommError {
    CommError::Setup(m.into())
}

/// Whether `libnccl.so.2` can be loaded here.
pub fn nccl_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { cudarc::nccl::sys::is_culib_present() }
}

impl NcclComm {
    /// Joins rank `rank` of `world` on GPU `gpu`; `master` is the TCP rendezvous (`None`: every
    /// rank takes the id from `NCCL_COMM_ID`). Every wait is at most `timeout`.
    pub fn start(
        rank: usize,
        world: usize,
        gpu: usize,
        master: Option<(&str, u16)>,
        timeout: Duration,
    ) -> Result<Self, CommError> {
        if !nccl_present() {
            return Err(setup(
                "the NCCL engine needs libnccl.so.2 (NVIDIA's NCCL: the libnccl2 package, or the nvidia-nccl-cu12 \
                 wheel's lib folder in LD_LIBRARY_PATH); or set [train] distributed = \"tcp\"",
            ));
        }
        let ctx = CudaContext::new(gpu).map_err(|e| setup(format!("rank {rank} cannot open GPU {gpu}: {e}")))?;
        let stream = ctx.new_stream().map_err(|e| setup(format!("GPU {gpu}: {e}")))?;
        let nccl = |e: cudarc::nccl::result::NcclError| setup(format!("NCCL on rank {rank}: {e:?}"));
        let (id, rendezvous) = match master {
            Some(master) => {
                // Every rank has arrived once the rendezvous returns: NCCL's own start-up, which
                // waits without a timeout, then finds them all.
                let mut tcp = TcpComm::join(rank, world, master, None, timeout)?;
                let id =
                    if rank == 0 {
                        let id = Id::new().map_err(nccl)?;
                        let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
                        for r in 1..world {
                            tcp.send_bytes(r, &bytes)?;
                        }
                        id
                    } else {
                        let bytes = tcp.recv_bytes(0)?;
                        let internal: [std::ffi::c_char; 128] =
                            bytes.iter().map(|&b| b as std::ffi::c_char).collect::<Vec<_>>().try_into().map_err(
                                |_| setup(format!("rank 0 sent an NCCL id of {} bytes, not 128", bytes.len())),
                            )?;
                        Id::uninit(internal)
                    };
                (id, Some(tcp))
            }
            // NCCL builds the same id from NCCL_COMM_ID on every rank, and rank 0 listens there.
            None if std::env::var_os("NCCL_COMM_ID").is_some() => (Id::new().map_err(nccl)?, None),
            None => {
                return Err(setup(
                    "the NCCL engine needs MASTER_ADDR and MASTER_PORT (rank 0's address and a free port) or \
                     NCCL_COMM_ID",
                ));
            }
        };
        // NCCL takes the calling thread's current device.
        ctx.bind_to_thread().map_err(|e| setup(format!("GPU {gpu}: {e}")))?;
        let comm = Comm::from_rank(stream.clone(), rank, world, id).map_err(nccl)?;
        Ok(Self { comm, stream, rank, world, timeout, _rendezvous: rendezvous })
    }

    fn driver(&self, e: cudarc::driver::DriverError) -> CommError {
        setup(format!("CUDA on rank {}: {e}", self.rank))
    }

    fn nccl(&self, e: cudarc::nccl::result::NcclError) -> CommError {
        setup(format!("NCCL on rank {}: {e:?}", self.rank))
    }

    /// Waits for the stream's work, at most the timeout; `peer` is the rank waited for.
    fn wait(&self, peer: usize) -> Result<(), CommError> {
        let done = self.stream.record_event(None).map_err(|e| self.driver(e))?;
        let started = Instant::now();
        while !done.try_is_complete().map_err(|e| self.driver(e))? {
            if started.elapsed() > self.timeout {
                return Err(CommError::Timeout { rank: self.rank, peer, seconds: self.timeout.as_secs() });
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        Ok(())
    }

    /// A copy of `data` on the GPU. It also makes the GPU current on this thread (the step may call
    /// from any of the pool's), which NCCL's calls need.
    fn to_gpu<T: cudarc::driver::DeviceRepr>(&self, data: &[T]) -> Result<CudaSlice<T>, CommError> {
        self.stream.context().bind_to_thread().map_err(|e| self.driver(e))?;
        self.stream.clone_htod(data).map_err(|e| self.driver(e))
    }

    fn to_host<T: cudarc::driver::DeviceRepr>(&self, data: &CudaSlice<T>) -> Result<Vec<T>, CommError> {
        self.stream.clone_dtoh(data).map_err(|e| self.driver(e))
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn send(&mut self, to: usize, data: &[f32]) -> Result<(), CommError> {
        // The length first, so that ranks that disagree get an error rather than NCCL's undefined
        // behaviour for mismatched counts.
        let len = self.to_gpu(&[data.len() as u64])?;
        self.comm.send(&len, to as i32).map_err(|e| self.nccl(e))?;
        if !data.is_empty() {
            let buf = self.to_gpu(data)?;
            self.comm.send(&buf, to as i32).map_err(|e| self.nccl(e))?;
        }
        self.wait(to)
    }

    fn recv(&mut self, from: usize, len: usize) -> Result<Vec<f32>, CommError> {
        let mut n = self.to_gpu(&[0u64])?;
        self.comm.recv(&mut n, from as i32).map_err(|e| self.nccl(e))?;
        self.wait(from)?;
        let got = self.to_host(&n)?[0] as usize;
        if got != len {
            return Err(CommError::Mismatch { rank: self.rank, peer: from, expected: len, got });
        }
        if len == 0 {
            return Ok(Vec::new());
        }
        let mut buf = self.stream.alloc_zeros::<f32>(len).map_err(|e| self.driver(e))?;
        self.comm.recv(&mut buf, from as i32).map_err(|e| self.nccl(e))?;
        self.wait(from)?;
        self.to_host(&buf)
    }

    fn broadcast(&mut self, root: usize, data: &mut [f32]) -> Result<(), CommError> {
        if data.is_empty() {
            return Ok(());
        }
        let mut buf = self.to_gpu(data)?;
        self.comm.broadcast_in_place(&mut buf, root as i32).map_err(|e| self.nccl(e))?;
        self.wait(root)?;
        data.copy_from_slice(&self.to_host(&buf)?);
        Ok(())
    }

    fn barrier(&mut self) -> Result<(), CommError> {
        // NCCL has no barrier: a one-value all-reduce that every rank must join.
        self.all_reduce_sum(&mut [0.0])
    }

    fn all_reduce_sum(&mut self, data: &mut [f32]) -> Result<(), CommError> {
        if data.is_empty() {
            return Ok(());
        }
        let mut buf = self.to_gpu(data)?;
        self.comm.all_reduce_in_place(&mut buf, &ReduceOp::Sum).map_err(|e| self.nccl(e))?;
        // Any rank may be the one missing; rank 0 names the run's first.
        self.wait(0)?;
        data.copy_from_slice(&self.to_host(&buf)?);
        Ok(())
    }
}
