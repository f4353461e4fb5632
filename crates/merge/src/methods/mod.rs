//! Merge methods: one file per family behind one interface.
//!
//! A method declares its parameters ([`ParamSpec`]) and, for each tensor, prepares a [`Combine`]
//! (after any whole-tensor statistics such as magnitude thresholds or norms) that then computes any
//! chunk of the output from the same chunk of the inputs.

mod linear;
mod model_stock;
mod params;
mod select;
mod slerp;
mod sparsify;
mod task_vectors;

use std::cell::RefCell;

pub use linear::Linear;
pub use model_stock::ModelStock;
pub use params::*;
pub use select::{TopK, top_k};
pub use slerp::Slerp;
pub use sparsify::*;
pub use task_vectors::*;

use crate::error::Result;
use crate::source::Source;

/// One output tensor's merge: its inputs and resolved parameters.
pub struct Job<'a> {
    /// Tensor name.
    pub tensor: &'a str,
    /// Shape of every input and of the output.
    pub shape: &'a [usize],
    /// The base model's tensor, for methods that take one.
    pub base: Option<&'a Source<'a>>,
    /// The other models' tensors, in configuration order.
    pub models: Vec<&'a Source<'a>>,
    /// Parameters: shared, and per entry of `models`.
    pub params: Resolved,
    /// Seed of the random methods.
    pub seed: u64,
}

impl Job<'_> {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Computes chunks of one output tensor.
pub trait Combine: Send + Sync {
    /// Fills `out` with output elements `start..start + out.len()`.
    fn fill(&self, job: &Job<'_>, start: usize, out: &mut [f32]);
}

/// A merge method.
pub trait MergeMethod: Send + Sync {
    /// The name in `merge_method`.
    fn name(&self) -> &'static str;
    /// Whether `base_model` is required.
    fn needs_base(&self) -> bool;
    /// Bounds on the number of non-base models.
    fn model_count(&self) -> (usize, usize) {
        (1, usize::MAX)
    }
    /// The parameters it takes.
    fn params(&self) -> Vec<ParamSpec>;
    /// Prepares the merge of one tensor.
    fn prepare(&self, job: &Job<'_>) -> Result<Box<dyn Combine>>;
}

/// The method named `name`, as mergekit names them.
pub fn method(name: &str) -> Option<Box<dyn MergeMethod>> {
    match name {
        "linear" => Some(Box::new(Linear)),
        "slerp" => Some(Box::new(Slerp)),
        "model_stock" => Some(Box::new(ModelStock)),
        _ => TaskVectors::named(name).map(|m| Box::new(m) as Box<dyn MergeMethod>),
    }
}

/// Names of every method.
pub const METHODS: &[&str] = &[
    "linear",
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_ties",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "slerp",
    "model_stock",
];

thread_local! {
    static SCRATCH: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with `k` scratch buffers of `len` f32 each, reused across calls on this thread (a fresh
/// 256 KiB allocation per chunk would be served by mmap and fault in every page each time).
pub fn with_scratch<R>(k: usize, len: usize, f: impl FnOnce(&mut [Vec<f32>]) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut bufs = cell.take();
        if bufs.len() < k {
            bufs.resize_with(k, Vec::new);
        }
        for b in bufs.iter_mut().take(k) {
            b.resize(len, 0.0);
        }
        let r = f(&mut bufs[..k]);
        cell.replace(bufs);
        r
    })
}
