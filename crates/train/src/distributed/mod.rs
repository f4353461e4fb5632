//! Data-parallel training's pieces that do not depend on an engine (issue 24): which micro-batches
//! a rank takes ([`plan`]), what an engine must offer ([`comm::Communicator`]), and the two
//! reductions of the adapter gradients ([`reduce`]): `exact`, a chain in rank order that adds the
//! micro-batches' gradient contributions in exactly the order one process adds them, so that the
//! adapter is the single-process one byte for byte; and `fast`, one all-reduce.
//!
//! [`thread_comm`] is an in-memory communicator between threads, for tests only: the engines are
//! NCCL (GPUs) and MPI (CPU clusters), never this.

pub mod comm;
pub mod plan;
pub mod reduce;
pub mod step;
pub mod thread_comm;

pub use comm::{CommError, Communicator};
