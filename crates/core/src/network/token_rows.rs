//! PEFT's trainable tokens (`trainable_token_indices`, `tuners/trainable_tokens/layer.py`): a few
//! rows of the embedding table trained in full, as new special tokens need. The rows' values replace
//! the table's (PEFT's `index_copy`, so whatever the base holds there does not matter), in the input
//! embedding and, when the head shares the table (tied embeddings), in the head's columns too.

use std::collections::HashMap;

use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData};

/// The trained rows of one embedding table.
#[derive(Module, Debug)]
pub struct TokenRows {
    /// The token ids, in PEFT's order.
    #[module(skip)]
    pub indices: Vec<u32>,
    /// `trainable_tokens_delta`: `[n, hidden]`, the rows' values (PEFT's name; not differences), f32.
    pub values: Tensor<2>,
}

impl TokenRows {
    /// Row k of `values` for each position of `ids` (n: none).
    fn slots(&self, ids: &[Vec<u32>]) -> Vec<i64> {
        let of: HashMap<u32, usize> = self.indices.iter().enumerate().map(|(k, &id)| (id, k)).collect();
        let n = self.indices.len();
        ids.iter().flatten().map(|id| of.get(id).copied().unwrap_or(n) as i64).collect()
    }

    /// The embeddings `emb` of `ids` with the trained rows in place of the table's.
    ///
    /// # Shapes
    /// - emb: `[batch, seq, hidden]`, ids: `batch` rows of `seq` ids
    /// - output: `[batch, seq, hidden]`
    pub fn embed(&self, emb: Tensor<3>, ids: &[Vec<u32>]) -> Tensor<3> {
        let [b, t, h] = emb.dims();
        let device = emb.device();
        let slots = self.slots(ids);
        let keep: Vec<f32> = slots.iter().map(|&k| if k as usize == self.indices.len() { 1.0 } else { 0.0 }).collect();
        // A zero row for the positions without a trained token.
        let table = Tensor::cat(vec![self.values.clone(), Tensor::zeros([1, h], &device)], 0); // [n + 1, h]
        let slots = Tensor::<2, Int>::from_data(TensorData::new(slots, [b, t]), &device);
        let trained = burn::tensor::module::embedding(table, slots); // [b, t, h]
        let keep = Tensor::<3>::from_data(TensorData::new(keep, [b, t, 1]), &device);
        emb * keep + trained
    }

    /// The head's logits `y` of `x` with the trained rows' columns: y[.., id_k] = x · values_k.
    ///
    /// # Shapes
    /// - y: `[.., vocab]`, x: `[.., hidden]`
    /// - output: `[.., vocab]`
    pub fn head<const D: usize>(&self, y: Tensor<D>, x: Tensor<D>) -> Tensor<D> {
        let vocab = y.dims()[D - 1];
        let (n, device) = (self.indices.len(), y.device());
        let mut keep = vec![1.0f32; vocab];
        let mut place = vec![0.0f32; n * vocab]; // [n, vocab]: row k is one-hot at id_k
        for (k, &id) in self.indices.iter().enumerate() {
            keep[id as usize] = 0.0;
            place[k * vocab + id as usize] = 1.0;
        }
        let keep = Tensor::<1>::from_data(TensorData::new(keep, [vocab]), &device).unsqueeze::<D>();
        let place = Tensor::<2>::from_data(TensorData::new(place, [n, vocab]), &device).unsqueeze::<D>();
        let trained = x.matmul(self.values.clone().transpose().unsqueeze::<D>()); // [.., n]
        y * keep + trained.matmul(place)
    }

    /// ∂L/∂values from ∂L/∂embeddings: each trained row gathers the gradients of its positions.
    ///
    /// # Shapes
    /// - grad: `[batch, seq, hidden]`
    /// - output: `[n, hidden]`
    pub fn embed_grad(&self, grad: Tensor<3>, ids: &[Vec<u32>]) -> Tensor<2> {
        let [b, t, h] = grad.dims();
        let (n, device) = (self.indices.len(), grad.device());
        let slots = Tensor::<1, Int>::from_data(TensorData::new(self.slots(ids), [b * t]), &device);
        let sums = Tensor::<2>::zeros([n + 1, h], &device).select_assign(
            0,
            slots,
            grad.reshape([b * t, h]),
            burn::tensor::IndexingUpdateOp::Add,
        );
        sums.slice([0..n, 0..h])
    }
}
