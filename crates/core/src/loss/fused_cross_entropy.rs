//! Σ −log softmax(logits)[target] over rows as one CPU kernel with a hand-written backward.
//!
//! burn composes it from a log-softmax (max, subtraction, exp, sum, log: five single-threaded passes
//! over `[rows, vocab]`, each result kept under autodiff) and a gather, and its backward makes as
//! many passes again. Here each row is one pass forward (rows in parallel) and one backward, and only
//! the logits and the row log-sum-exps are kept.
//!
//! Math, per row with L = log Σ_j e^{z_j}: loss = L − z_target, ∂loss/∂z_j = softmax(z)_j − [j = target].
//! Rows may carry weights w (preference losses weight each sequence's tokens by its own
//! ∂loss/∂log p): then loss = Σ w·(L − z_target), and each row's gradient is scaled by its w.
//!
//! The plain reference is `log_softmax(z).gather(target).sum().neg()` (see
//! [`crate::loss::chunked`]); the tests compare values and gradients.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;
use rayon::prelude::*;

use crate::kernels::cpu_kernel::{exp_f32, f32_tensor, f32_values, max_f32, multiversion, sum_exp_f32};

/// The fused loss, on the backends that have it.
#[backend_extension(Flex, Autodiff)]
pub trait CrossEntropyBackend: Backend {
    /// Σ over rows of −log softmax(logits row)[target], each row times its weight when given.
    ///
    /// # Shapes
    /// - logits: `[rows, vocab]`; targets: `rows` ids; weights: `rows` values
    /// - output: `[1]`
    fn cross_entropy_sum(
        logits: FloatTensor<Self>,
        targets: Arc<Vec<u32>>,
        weights: Option<Arc<Vec<f32>>>,
    ) -> FloatTensor<Self>;

    /// Each row's −log softmax(logits row)[target], as values: nothing is back-propagated through
    /// them (the per-sequence log-probabilities of a preference loss, which set the weights of the
    /// pass that is).
    ///
    /// # Shapes
    /// - logits: `[rows, vocab]`; targets: `rows` ids
    /// - output: `[rows]`
    fn cross_entropy_rows(logits: FloatTensor<Self>, targets: Arc<Vec<u32>>) -> FloatTensor<Self>;
}

impl CrossEntropyBackend for Flex {
    fn cross_entropy_sum(logits: FlexTensor, targets: Arc<Vec<u32>>, weights: Option<Arc<Vec<f32>>>) -> FlexTensor {
        forward(&logits, &targets, weights.as_deref().map(Vec::as_slice)).0
    }

    fn cross_entropy_rows(logits: FlexTensor, targets: Arc<Vec<u32>>) -> FlexTensor {
        let rows = row_losses(&logits, &targets);
        let n = rows.len();
        f32_tensor(rows, &[n])
    }
}

multiversion! {
    /// log Σ e^z of one row.
    fn log_sum_exp(z: &[f32]) -> f32 {
        let m = max_f32(z);
        m + sum_exp_f32(z, m).ln()
    }
}

multiversion! {
    /// ∂(scale · loss)/∂z of one row, scale · (e^{z − L} − [j = target]), over the row's logits.
    fn row_grad_in_place(z: &mut [f32], lse: f32, target: usize, scale: f32) {
        for v in z.iter_mut() {
            *v = scale * exp_f32(*v - lse);
        }
        z[target] -= scale;
    }
}

/// Each row's −log softmax(z)[target].
///
/// # Shapes
/// - logits: `[rows, vocab]`; targets: `rows` ids
fn row_losses(logits: &FlexTensor, targets: &[u32]) -> Vec<f32> {
    let vocab = logits.layout().shape()[1];
    let z = f32_values(logits);
    z.par_chunks(vocab.max(1)).zip(targets.par_iter()).map(|(z, &t)| log_sum_exp(z) - z[t as usize]).collect()
}

/// The summed (weighted) loss and each row's log-sum-exp.
fn forward(logits: &FlexTensor, targets: &[u32], weights: Option<&[f32]>) -> (FlexTensor, Vec<f32>) {
    let vocab = logits.layout().shape()[1];
    let z = f32_values(logits);
    let lse: Vec<f32> = z.par_chunks(vocab.max(1)).map(log_sum_exp).collect();
    // Rows summed in order, in f64, whatever the threads.
    let row = |r: usize, l: f32, t: u32| (l - z[r * vocab + t as usize]) as f64;
    let sum: f64 = match weights {
        None => lse.iter().zip(targets).enumerate().map(|(r, (&l, &t))| row(r, l, t)).sum(),
        Some(w) => lse.iter().zip(targets).zip(w).enumerate().map(|(r, ((&l, &t), &w))| w as f64 * row(r, l, t)).sum(),
    };
    (f32_tensor(vec![sum as f32], &[1]), lse)
}

fn backward(
    mut logits: FlexTensor,
    targets: &[u32],
    weights: Option<&[f32]>,
    lse: &[f32],
    d_loss: &FlexTensor,
) -> FlexTensor {
    let shape = logits.layout().shape().to_vec();
    let vocab = shape[1];
    let scale = f32_values(d_loss)[0];
    // The logits are needed no more: when nothing else holds them, their buffer becomes the
    // gradient (a 49k-vocabulary chunk is 100 MB that need not be allocated and faulted in again);
    // otherwise a copy of them does.
    let in_place = logits.layout().contiguous_offsets() == Some((0, shape[0] * vocab))
        && logits.try_storage_mut::<f32>().is_some();
    let mut dz = if in_place { logits } else { f32_tensor(f32_values(&logits).into_owned(), &shape) };
    let z = &mut dz.try_storage_mut::<f32>().expect("held by this call alone")[..shape[0] * vocab];
    z.par_chunks_mut(vocab.max(1)).enumerate().for_each(|(r, z)| {
        let scale = weights.map_or(scale, |w| scale * w[r]);
        row_grad_in_place(z, lse[r], targets[r] as usize, scale);
    });
    dz
}

#[derive(Debug)]
struct CrossEntropyBackward;

/// [`CrossEntropyBackend::cross_entropy_rows`] gives values only; a graph that reaches it is a bug.
#[derive(Debug)]
struct RowsBackward;

impl Backward<Flex, 1> for RowsBackward {
    type State = ();

    fn backward(self, _ops: Ops<Self::State, 1>, _grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        panic!("cross_entropy_rows gives values only; back-propagate through cross_entropy_sum");
    }
}

impl Backward<Flex, 1> for CrossEntropyBackward {
    type State = (FlexTensor, Arc<Vec<u32>>, Option<Arc<Vec<f32>>>, Arc<Vec<f32>>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node] = ops.parents;
        let d_loss = grads.consume::<Flex>(&ops.node);
        if let Some(node) = node {
            let (logits, targets, weights, lse) = ops.state;
            let weights = weights.as_deref().map(Vec::as_slice);
            grads.register::<Flex>(node.id, backward(logits, &targets, weights, &lse, &d_loss));
        }
    }
}

impl<C: CheckpointStrategy> CrossEntropyBackend for Autodiff<Flex, C> {
    fn cross_entropy_sum(
        logits: FloatTensor<Self>,
        targets: Arc<Vec<u32>>,
        weights: Option<Arc<Vec<f32>>>,
    ) -> FloatTensor<Self> {
        let w = weights.clone();
        let w = w.as_deref().map(Vec::as_slice);
        match CrossEntropyBackward.prepare::<C>([logits.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let z = logits.into_primitive();
                let (loss, lse) = forward(&z, &targets, w);
                prep.finish((z, targets, weights, Arc::new(lse)), loss)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(&logits.into_primitive(), &targets, w).0),
        }
    }

    fn cross_entropy_rows(logits: FloatTensor<Self>, targets: Arc<Vec<u32>>) -> FloatTensor<Self> {
        let prep = RowsBackward.prepare::<C>([logits.node()]).compute_bound();
        prep.stateless(<Flex as CrossEntropyBackend>::cross_entropy_rows(logits.into_primitive(), targets))
    }
}

/// Σ −log softmax(logits)[target], each row times its weight when given (the CPU kernel: call only
/// where [`crate::kernels::cpu_kernel::use_fused`]). Every target must be below the vocabulary size.
///
/// # Shapes
/// - logits: `[rows, vocab]`, targets: `rows` ids, weights: `rows` values
/// - output: `[1]`
pub fn cross_entropy_sum(logits: Tensor<2>, targets: Vec<u32>, weights: Option<Vec<f32>>) -> Tensor<1> {
    let out = <Dispatch as CrossEntropyBackend>::cross_entropy_sum(
        logits.into_dispatch(),
        Arc::new(targets),
        weights.map(Arc::new),
    );
    Tensor::from_dispatch(out)
}

/// Each row's −log softmax(logits)[target], untracked (the CPU kernel: call only where
/// [`crate::kernels::cpu_kernel::use_fused`]).
///
/// # Shapes
/// - logits: `[rows, vocab]`, targets: `rows` ids
/// - output: `[rows]`, values only
pub fn cross_entropy_rows(logits: Tensor<2>, targets: Vec<u32>) -> Tensor<1> {
    Tensor::from_dispatch(<Dispatch as CrossEntropyBackend>::cross_entropy_rows(
        logits.into_dispatch(),
        Arc::new(targets),
    ))
}
